"""Where and in what precision training runs: `tf.distribute`
strategies, mixed-precision policies, and building the model under
them with batch norm statistics kept in sync.
"""

import os

import keras
import tensorflow as tf

from keras_shufflenet.models.pretrained import ARCHITECTURE_DEFAULTS
from keras_shufflenet.models.shufflenet import ShuffleNet
from keras_shufflenet.training.config import STRATEGIES
from keras_shufflenet.utils.checks import check_choice


def create_strategy(name, tpu=""):
    """Creates a `tf.distribute.Strategy` by name.

    Args:
        name: One of `STRATEGIES`.
        tpu: TPU address for `"tpu"`; `"local"` on a TPU VM.

    Returns:
        The strategy.
    """
    check_choice("strategy", name, STRATEGIES)
    if name == "multi_worker":
        # Must come first: collectives are configured before TF starts.
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "strategy='multi_worker' reads the cluster from the TF_CONFIG "
                "environment variable, which is not set."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu or None
    )
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def precision_policy(precision, strategy):
    """Resolves `"auto"` to a Keras dtype policy name for the strategy.

    Args:
        precision: `"auto"` or a Keras dtype policy name.
        strategy: The strategy that will train.

    Returns:
        `"mixed_bfloat16"` on TPU, `"mixed_float16"` when the strategy
        trains on GPUs, else `"float32"`; `precision` itself when it is not
        `"auto"`.
    """
    if precision != "auto":
        return precision
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "mixed_bfloat16"
    devices = strategy.extended.worker_devices
    if any("GPU" in device.upper() for device in devices):
        return "mixed_float16"
    return "float32"


def is_chief(strategy):
    """Whether this process writes logs, configs and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief" or task_type is None:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def build_model(model_config, num_classes, image_size, *, logits=True):
    """Builds the ShuffleNet a config describes.

    Args:
        model_config: A `ModelConfig`.
        num_classes: Classifier width.
        image_size: Input height and width.
        logits: Return logits (for training) instead of probabilities.
            Defaults to True.

    Returns:
        A `keras.Model` taking RGB pixel values in [0, 255]; with
        `model_config.sync_batch_norm` its BN layers are synchronized.
    """
    model = ShuffleNet(
        model_config.scale,
        model_config.groups,
        model_config.se,
        shallow=model_config.shallow,
        shuffle=model_config.shuffle,
        group_conv_implementation=model_config.group_conv_implementation,
        input_shape=(image_size, image_size, 3),
        classes=num_classes,
        classifier_activation=None if logits else "softmax",
        **{key: getattr(model_config, key) for key in ARCHITECTURE_DEFAULTS},
    )
    if model_config.sync_batch_norm:
        model = synchronize_batch_norm(model)
    return model


def synchronize_batch_norm(model):
    """Clones a functional model with `synchronized=True` BN layers.

    Call it under the strategy's scope; the clone has fresh weights.

    Args:
        model: A functional `keras.Model`.

    Returns:
        The clone, whose BatchNormalization layers compute batch statistics
        over all replicas.
    """

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["synchronized"] = True
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


def batch_norm_layers(model):
    """All BatchNormalization layers of a model, nested ones included."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
