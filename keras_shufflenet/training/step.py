"""The training step: softmax cross-entropy with label smoothing and weight
decay, SGD, for every `tf.distribute` strategy, run `num_steps` at a time
inside one `tf.function`.

Reference:
    Zhang et al., "ShuffleNet", section 4 (training settings).
"""

import numpy as np
import tensorflow as tf

from keras_shufflenet.training.distribution import batch_norm_layers
from keras_shufflenet.training.evaluation import sum_over_steps
from keras_shufflenet.training.optimization import apply_gradients
from keras_shufflenet.training.optimization import smoothed_cross_entropy
from keras_shufflenet.training.optimization import training_sums
from keras_shufflenet.training.optimization import weight_decay_loss


class TrainStep:
    """Runs training steps and keeps the replicas' BN statistics in sync.

    Args:
        strategy: The `tf.distribute.Strategy` the variables live in.
        model: The model whose variables train (weight decay, BN).
        train_model: The graph that computes the logits: `model` or its
            fast training graph (`training_model(model)`), same variables.
        optimizer: A built Keras optimizer (or `LossScaleOptimizer`).
        num_classes: Classifier width.
        global_batch: Images per step over all replicas.
        label_smoothing: Label smoothing of the cross-entropy.
        weight_decay: L2 coefficient on the kernels
            (`optimization.weight_decay_loss`).
        position: Optional int32 `[2]` variable. When given, batches are
            `(images, labels, positions)` (`InputPipeline.dataset(...,
            with_position=True)`) and it is set after every step to the
            `(epoch, index)` that follows the last example trained on.
        variables: The variables that train (and get weight decay).
            Defaults to `model.trainable_variables`.
    """

    def __init__(
        self, strategy, model, train_model, optimizer, *, num_classes,
        global_batch, label_smoothing, weight_decay, position=None,
        variables=None,
    ):
        self.strategy = strategy
        self.variables = variables
        self.position = position
        self.model = model
        self.train_model = train_model
        self.optimizer = optimizer
        self.num_classes = num_classes
        self.global_batch = global_batch
        self.label_smoothing = label_smoothing
        self.weight_decay = weight_decay
        self._moving_stats = [
            v
            for layer in batch_norm_layers(model)
            for v in (layer.moving_mean, layer.moving_variance)
        ]
        self._run = tf.function(self._steps)
        self._sync = tf.function(self._sync_moving_statistics)

    def __call__(self, iterator, num_steps):
        """Runs `num_steps` steps.

        Returns:
            A numpy array `[summed loss, correct top-1, examples]` over the
            steps, for the global batch.
        """
        return self._run(iterator, tf.constant(num_steps)).numpy()

    def _steps(self, iterator, num_steps):
        if self.position is None:
            return sum_over_steps(
                self.strategy, self._step, iterator, num_steps, size=3
            )
        totals = tf.zeros([3])
        for _ in tf.range(num_steps):
            images, labels, positions = next(iterator)
            per_replica = self.strategy.run(self._step, args=(images, labels))
            totals += self.strategy.reduce(
                tf.distribute.ReduceOp.SUM, per_replica, axis=None
            )
            self.position.assign(self._next_position(positions))
        return totals

    def _next_position(self, positions):
        """The `(epoch, index)` after the latest example of this step.

        The replicas of one input pipeline take consecutive batches, so
        the latest is the largest last row over the local replicas.
        """
        last = tf.stack(
            [p[-1] for p in self.strategy.experimental_local_results(positions)]
        )
        order = tf.cast(last[:, 0], tf.int64) * 2**32 + tf.cast(
            last[:, 1], tf.int64
        )
        return tf.gather(last, tf.argmax(order)) + tf.constant([0, 1])

    # No Python control flow on tensors here: AutoGraph would only convert
    # the model's layers, which tf_keras does layer by layer, a large part
    # of a QAT step's tracing (Keras 3 layers it leaves alone).
    @tf.autograph.experimental.do_not_convert
    def _step(self, images, labels):
        replicas = self.strategy.num_replicas_in_sync
        with tf.GradientTape() as tape:
            logits = self.train_model(
                tf.cast(images, tf.float32), training=True
            )
            per_example = smoothed_cross_entropy(
                labels, logits, self.num_classes, self.label_smoothing
            )
            # Gradients are summed over replicas: divide by the global
            # batch, and the weight penalty by the number of replicas.
            loss = tf.reduce_sum(per_example) / self.global_batch
            variables = self.variables or self.model.trainable_variables
            decay = weight_decay_loss(variables, self.weight_decay)
            loss += decay / replicas
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        apply_gradients(self.optimizer, grads, variables)
        return training_sums(labels, logits, per_example)

    def _sync_moving_statistics(self):
        # Keras' BN statistics are mirrored variables with no aggregation:
        # each replica updates its own copy. Average the copies so that
        # evaluation, checkpoints and every worker agree. One flat vector
        # makes it a single all-reduce.
        local = self.strategy.run(
            lambda: tf.concat(
                [tf.reshape(v.value, [-1]) for v in self._moving_stats], 0
            )
        )
        mean = self.strategy.reduce(
            tf.distribute.ReduceOp.MEAN, local, axis=None
        )
        sizes = [int(np.prod(v.shape)) for v in self._moving_stats]
        for variable, part in zip(self._moving_stats, tf.split(mean, sizes)):
            variable.assign(tf.reshape(part, variable.shape))

    def sync_moving_statistics(self):
        """Averages the BN moving statistics over replicas and workers."""
        if self.strategy.num_replicas_in_sync > 1 and self._moving_stats:
            self._sync()
