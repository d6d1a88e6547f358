"""Inference graphs for export: the same function as the training model,
lowered for on-device runtimes (TFLite/LiteRT with XNNPACK)."""

import keras

from keras_shufflenet.layers import set_group_conv_implementation


def deployment_model(model):
    """Returns a copy of `model` lowered for inference export.

    Every `PointwiseGroupConv2D` runs as one native grouped convolution,
    which TFLite's CONV_2D supports and XNNPACK runs faster than the split
    form used for training. The weights are shared values, copied.

    Args:
        model: A functional Keras model such as `ShuffleNet(...)`.

    Returns:
        A new functional `keras.Model` computing the same function.
    """
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    set_group_conv_implementation(clone, "grouped")
    return clone
