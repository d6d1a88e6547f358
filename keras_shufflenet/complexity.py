"""Complexity accounting in the paper's unit: FLOPs are multiply-adds.

Reference:
    Table 1 caption: "The complexity is evaluated with FLOPs, i.e. the
    number of floating-point multiplication-adds."
"""

import math

import keras

from keras_shufflenet.layers import PointwiseGroupConv2D
from keras_shufflenet.layers import iter_layers


def _spatial(shape, data_format):
    dims = shape[1:-1] if data_format == "channels_last" else shape[2:]
    if any(d is None for d in dims):
        return None
    return math.prod(dims)


def layer_flops(layer):
    """Multiply-adds of one layer for one example, or 0 if it has none.

    Counts convolutions (grouped and depthwise too) and dense layers, as the
    paper does; batch norm, activations, pooling and additions are free.

    Args:
        layer: A built Keras layer with a single inbound node.

    Returns:
        An int.
    """
    if isinstance(layer, keras.layers.Dense):
        return layer.kernel.shape[0] * layer.kernel.shape[1]
    if not isinstance(
        layer,
        (
            keras.layers.Conv2D,
            keras.layers.DepthwiseConv2D,
            keras.layers.SeparableConv2D,
            PointwiseGroupConv2D,
        ),
    ):
        return 0
    out_shape = layer.output.shape
    spatial = _spatial(out_shape, layer.data_format)
    if spatial is None:
        raise ValueError(
            f"Layer {layer.name!r} has a dynamic output shape {out_shape}; "
            "pass `input_shape` to `complexity` to count its FLOPs."
        )
    if isinstance(layer, keras.layers.SeparableConv2D):
        kh, kw, cin, mult = layer.depthwise_kernel.shape
        return spatial * (kh * kw * cin * mult + math.prod(
            layer.pointwise_kernel.shape
        ))
    # Every kernel here is (kh, kw, in_per_group, out) or, for depthwise,
    # (kh, kw, in, multiplier): one multiply-add per entry per position.
    return spatial * math.prod(layer.kernel.shape)


def complexity(model, input_shape=None):
    """Returns the paper's complexity figures of a model.

    Reference:
        Table 1 (complexity column), Table 2 and Table 5 (MFLOPs).

    Args:
        model: A functional Keras model, such as `ShuffleNet(...)`.
        input_shape: Optional `(height, width, channels)` at which to count,
            required when the model's input size is dynamic. Defaults to the
            model's own input shape.

    Returns:
        A dict: `"flops"`, multiply-adds of the convolution, depthwise and
        dense layers for one image; `"params"`, the number of learned
        parameters, as the official release and PyTorch count them: every
        weight except batch norm's moving statistics.
    """
    counted = model
    if input_shape is not None:
        inputs = keras.Input(shape=tuple(input_shape))
        counted = keras.models.clone_model(model, input_tensors=inputs)
    flops = sum(layer_flops(layer) for layer in iter_layers(counted))
    moving_stats = sum(
        math.prod(layer.moving_mean.shape) + math.prod(
            layer.moving_variance.shape
        )
        for layer in iter_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    params = model.count_params() - moving_stats
    return {"flops": int(flops), "params": int(params)}
