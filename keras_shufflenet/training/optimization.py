"""The paper's optimization: SGD with a linearly decaying learning rate
scaled with the batch, weight decay on the kernels only (section 4).
"""

import keras
import tensorflow as tf
from keras import ops


def scaled_learning_rate(lr, batch_size, reference_batch_size=1024):
    """Scales a learning rate linearly with the batch size.

    Reference:
        Zhang et al., ShuffleNet, section 4 (0.5 at batch 1024).

    Args:
        lr: Learning rate at `reference_batch_size`.
        batch_size: Global batch size in use.
        reference_batch_size: Defaults to 1024.

    Returns:
        `lr * batch_size / reference_batch_size`.
    """
    return lr * batch_size / reference_batch_size


@keras.saving.register_keras_serializable(package="keras_shufflenet")
class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear decay to 0 with optional linear warm-up, by global step.

    Step `s` (0-based) of `total_steps` trains with
    `peak * (total_steps - s) / (total_steps - warmup_steps)`, capped at
    `peak * (s + 1) / warmup_steps` during warm-up; from `total_steps` on
    the rate is 0. The first step trains at the peak (without warm-up) and
    the last at `peak / total_steps`. Being a function of the step alone,
    the schedule continues exactly where a resumed run stopped.

    Reference:
        Zhang et al., ShuffleNet, section 4 ("linear-decay learning rate
        policy (decreased from 0.5 to 0)").

    Args:
        peak: Peak learning rate.
        total_steps: Steps until the rate reaches 0.
        warmup_steps: Warm-up steps. Defaults to 0.
    """

    def __init__(self, peak, total_steps, warmup_steps=0):
        if not total_steps > warmup_steps >= 0:
            raise ValueError(
                "`total_steps` must exceed `warmup_steps` >= 0. Received: "
                f"total_steps={total_steps}, warmup_steps={warmup_steps}"
            )
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        # keras.ops: the optimizer calls it inside TF graphs and JAX jits.
        step = ops.cast(step, "float32")
        decay = (self.total_steps - step) / float(
            self.total_steps - self.warmup_steps
        )
        rate = ops.clip(decay, 0.0, 1.0)
        if self.warmup_steps:
            rate = ops.minimum(rate, (step + 1.0) / self.warmup_steps)
        return self.peak * rate

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
        }


def smoothed_cross_entropy(labels, logits, num_classes, smoothing):
    """Per-example softmax cross-entropy against label-smoothed targets.

    Args:
        labels: `[batch]` integer labels.
        logits: `[batch, num_classes]` logits (cast to float32).
        num_classes: Classifier width.
        smoothing: Label smoothing: the target puts `1 - smoothing +
            smoothing / num_classes` on the label, `smoothing /
            num_classes` elsewhere.

    Returns:
        A float32 `[batch]` tensor.
    """
    targets = ops.one_hot(labels, num_classes) * (1.0 - smoothing)
    targets = targets + smoothing / num_classes
    return ops.categorical_crossentropy(
        targets, ops.cast(logits, "float32"), from_logits=True
    )


def training_sums(labels, logits, per_example_loss):
    """`[summed loss, correct top-1, examples]` of one training batch."""
    predictions = ops.cast(ops.argmax(logits, axis=1), "int32")
    correct = ops.sum(
        ops.cast(ops.equal(predictions, ops.cast(labels, "int32")), "float32")
    )
    count = ops.cast(ops.shape(labels)[0], "float32")
    return ops.stack([ops.sum(per_example_loss), correct, count])


def weight_decay_variables(model):
    """Returns the variables that get weight decay: kernels, not BN or bias.

    Matches the official release's `get_parameters`, which decays every
    parameter with more than one dimension: convolution, depthwise and
    dense kernels. BN scales and offsets, biases and BN statistics are left
    alone.

    Reference:
        Zhang et al., ShuffleNet, section 4 (weight decay 4e-5).

    Args:
        model: A Keras model, or the list of its variables that train.

    Returns:
        A list of trainable variables of rank > 1.
    """
    if not isinstance(model, (list, tuple)):
        model = model.trainable_variables
    return [v for v in model if len(v.shape) > 1]


def weight_decay_loss(model, weight_decay):
    """L2 penalty `weight_decay / 2 * sum(||w||^2)` over decayed kernels.

    Its gradient is `weight_decay * w`, the same update as PyTorch's
    `SGD(weight_decay=...)` in the official release: coupled with momentum
    and scaled by the learning rate, unlike Keras' decoupled `weight_decay`
    argument.

    Reference:
        Zhang et al., ShuffleNet, section 4.

    Args:
        model: A Keras model, or the list of its variables that train.
        weight_decay: Coefficient, e.g. 4e-5.

    Returns:
        A float32 scalar tensor.
    """
    return weight_decay_penalty(weight_decay_variables(model), weight_decay)


def weight_decay_penalty(kernels, weight_decay):
    """`weight_decay / 2 * sum(||w||^2)` over `kernels`, in `keras.ops`.

    Args:
        kernels: Variables or arrays (a JAX step passes its traced values).
        weight_decay: Coefficient.

    Returns:
        A float32 scalar.
    """
    if not weight_decay or not kernels:
        return ops.zeros((), "float32")
    squares = [ops.sum(ops.square(ops.cast(v, "float32"))) for v in kernels]
    return 0.5 * weight_decay * ops.sum(ops.stack(squares))


def apply_gradients(optimizer, grads, variables):
    """Applies one replica's gradients with a Keras 3 optimizer.

    Call it inside `strategy.run`. The optimizer sums the gradients over
    replicas. A `LossScaleOptimizer` on several replicas first gets the
    replicas' mean: Keras decides whether to skip an overflowed step from
    the first replica's own gradients, before the sum, and would otherwise
    apply a sum that another replica's overflow made infinite. Given the
    mean on every replica, the decision is global and the optimizer's sum
    of equal means is the true sum.

    Args:
        optimizer: A Keras optimizer, possibly a `LossScaleOptimizer`.
        grads: This replica's gradients (of the scaled loss).
        variables: The variables they belong to.
    """
    context = tf.distribute.get_replica_context()
    if (
        isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        and context is not None
        and context.num_replicas_in_sync > 1
    ):
        grads = context.all_reduce(tf.distribute.ReduceOp.MEAN, grads)
    optimizer.apply(grads, variables)


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite."""
