"""The `tf_keras` twin of a Keras 3 ShuffleNet, for quantization-aware
training with tensorflow-model-optimization (which works only on Keras 2).

The twin is the deployment graph (`models.lowering` at inference), built
from `tf_keras` layers TFLite and tfmot know: the tiled normalisation, the
row-padded max pool, grouped `Conv2D`s, the channel shuffle as
Reshape-Transpose-Reshape, a stride-2 unit's shuffle after its depthwise
conv and BN, and the average-pooled shortcut as a fixed depthwise conv.
Converted, its QAT model is op for op the graph post-training quantization
gives, so it runs as fast.
"""

import keras
import numpy as np
import tensorflow as tf
import tf_keras

from keras_shufflenet.models.layers import ChannelShuffle
from keras_shufflenet.models.layers import PointwiseGroupConv2D
from keras_shufflenet.models.layers import shuffle_permutation
from keras_shufflenet.models.lowering import DeferredChannelShuffle
from keras_shufflenet.models.lowering import DepthwiseAveragePooling2D
from keras_shufflenet.models.lowering import PermutedDepthwiseConv2D
from keras_shufflenet.models.lowering import RowZeroPadding2D
from keras_shufflenet.models.lowering import ShufflingBatchNormalization
from keras_shufflenet.models.lowering import tiled_normalization
from keras_shufflenet.models.parts import derived_name
from keras_shufflenet.models.parts import network_parts
from keras_shufflenet.qat.layers import LAYERS
from keras_shufflenet.qat.layers import QUANTIZE
from keras_shufflenet.qat.layers import ConstantOperand
from keras_shufflenet.qat.layers import ConstantOperandQuantizeConfig
from keras_shufflenet.qat.layers import OutputQuantizeConfig
from keras_shufflenet.qat.layers import PassThroughQuantizeConfig
from keras_shufflenet.qat.layers import PerTensorDepthwiseQuantizeConfig
from keras_shufflenet.qat.layers import RowZeroPadding
from keras_shufflenet.qat.layers import SharedRangeQuantizeConfig


class UnsupportedLayerError(ValueError):
    """A model holds a layer the `tf_keras` twin cannot express."""


def _shuffle_order(layer, inverse):
    """The permutation of a stride-2 lowering layer's deferred shuffle.

    As in `models.lowering`, per-channel weights taken in the inverse
    order act on the unshuffled channels.
    """
    return shuffle_permutation(
        layer.input.shape[-1], layer.shuffle_groups, layer.shuffle_order,
        inverse=inverse,
    )


def _shuffle(x, groups, order, name):
    """Section 3.1's shuffle as RESHAPE-TRANSPOSE-RESHAPE, as on device."""
    _, height, width, channels = x.shape
    n = channels // groups
    a, b = (groups, n) if order == "paper" else (n, groups)
    x = LAYERS.Reshape(
        (height * width, a, b), name=derived_name(name, "split")
    )(x)
    x = LAYERS.Permute((1, 3, 2), name=derived_name(name, "transpose"))(x)
    return LAYERS.Reshape(
        (height, width, channels), name=derived_name(name, "merge")
    )(x)


def _activation(layer):
    return keras.activations.serialize(layer.activation)


def _twin_normalization(layer, x):
    name = layer.name
    tiled = tiled_normalization(layer)
    if tiled is None:
        raise UnsupportedLayerError(
            f"Layer {name!r}: QAT needs a normalisation with constant "
            "statistics on a channels-last input of static width."
        )
    scale_values, offset_values = (c.tolist() for c in tiled)
    scale = QUANTIZE.quantize_annotate_layer(
        ConstantOperand(
            "multiply", scale_values, trainable=False,
            name=derived_name(name, "scale"),
        ),
        ConstantOperandQuantizeConfig(),
    )
    offset = QUANTIZE.quantize_annotate_layer(
        ConstantOperand(
            "add", offset_values, trainable=False, name=name
        ),
        ConstantOperandQuantizeConfig(),
    )
    return offset(scale(x))


def _twin_row_padding(layer, x):
    return QUANTIZE.quantize_annotate_layer(
        RowZeroPadding(layer.padding, name=layer.name),
        PassThroughQuantizeConfig(),
    )(x)


def _twin_average_pool(layer, x, per_axis):
    """The shortcut's average pool as a fixed depthwise conv."""
    name = layer.name
    if layer.padding != "valid":
        raise UnsupportedLayerError(
            f"Layer {name!r}: only 'valid' average pooling runs as a "
            f"depthwise conv. Received: padding={layer.padding!r}"
        )
    pool = tuple(layer.pool_size)
    conv = LAYERS.DepthwiseConv2D(
        pool, strides=layer.strides, use_bias=False, trainable=False,
        name=name,
    )
    kernel = np.full(
        pool + (layer.input.shape[-1], 1), 1.0 / np.prod(pool), "float32"
    )
    annotated = QUANTIZE.quantize_annotate_layer(
        conv, SharedRangeQuantizeConfig(per_axis)
    )
    return annotated(x), [(conv, [kernel])]


def _depthwise_batch_norms(model):
    """`{depthwise conv name: batch norm}` of every unit (`models.parts`)."""
    return {
        unit["dwconv"].name: unit["dwconv_bn"]
        for unit in network_parts(model).units
    }


def _twin_order_depthwise(layer, kernel):
    """A depthwise kernel in the twin's channel order."""
    if isinstance(layer, PermutedDepthwiseConv2D):
        return kernel[:, :, _shuffle_order(layer, inverse=True), :]
    return kernel


def _model_order(layer, values):
    """The inverse of `_twin_order_depthwise` / `_twin_order_batch_norm`:
    a layer's weights, from the twin's channel order back to its own."""
    if isinstance(layer, PermutedDepthwiseConv2D):
        return [values[0][:, :, _shuffle_order(layer, inverse=False), :]]
    if isinstance(layer, ShufflingBatchNormalization):
        forward = _shuffle_order(layer, inverse=False)
        return [v[forward] for v in values]
    return values


def _twin_order_batch_norm(layer, weights):
    """A batch norm's weights in the twin's channel order (the twin
    shuffles after it)."""
    if isinstance(layer, ShufflingBatchNormalization):
        inverse = _shuffle_order(layer, inverse=True)
        return [w[inverse] for w in weights]
    return weights


def _fold_scale(norm, weights):
    """Per channel, what a frozen batch norm multiplies by."""
    gamma, _, _, variance = weights
    return gamma / np.sqrt(variance + np.float32(norm.epsilon))


def _twin_depthwise(layer, x, norm=None):
    """A depthwise conv's twin; with `norm`, that batch norm folded in and
    the kernel quantized per tensor."""
    name = layer.name
    if layer.depth_multiplier != 1 or layer.use_bias:
        raise UnsupportedLayerError(
            f"Layer {name!r}: the twin takes depthwise convs with "
            "depth_multiplier=1 and no bias, as ShuffleNet has."
        )
    kernel = _twin_order_depthwise(layer, layer.get_weights()[0])
    conv = LAYERS.DepthwiseConv2D(
        layer.kernel_size, strides=layer.strides, padding=layer.padding,
        use_bias=norm is not None, name=name,
    )
    if norm is None:
        return conv(x), [(conv, [kernel])]
    # y = s * (conv(x) - mean) + beta: the kernel times s, and a bias.
    stats = _twin_order_batch_norm(norm, norm.get_weights())
    scale = _fold_scale(norm, stats)
    weights = [
        kernel * scale[None, None, :, None], stats[1] - stats[2] * scale
    ]
    annotated = QUANTIZE.quantize_annotate_layer(
        conv, PerTensorDepthwiseQuantizeConfig()
    )
    return annotated(x), [(conv, weights)]


def _twin_batch_norm(layer, x, freeze_batch_norm, folded_in):
    """A batch norm's twin, then its shuffle if it shuffles; nothing but
    the shuffle where its depthwise conv has it folded in."""
    name = layer.name
    if layer.axis not in (-1, 3) or not (layer.center and layer.scale):
        raise UnsupportedLayerError(
            f"Layer {name!r}: the twin takes channels-last batch norms "
            "with a scale and an offset."
        )
    y, assigned = x, []
    if not folded_in:
        # tf_keras runs a non-trainable BN in inference mode, training too.
        norm = LAYERS.BatchNormalization(
            epsilon=layer.epsilon, momentum=layer.momentum,
            trainable=not freeze_batch_norm, name=name,
        )
        y = norm(x)
        assigned = [
            (norm, _twin_order_batch_norm(layer, layer.get_weights()))
        ]
    if isinstance(layer, ShufflingBatchNormalization):
        y = _shuffle(
            y, layer.shuffle_groups, layer.shuffle_order,
            derived_name(name, "shuffle"),
        )
    return y, assigned


def _twin_layer(layer, x, freeze_batch_norm, folded=None):
    """`(outputs, [(tf_keras layer, weights)])` for one Keras 3 layer.

    `folded` maps the depthwise convs whose batch norm the twin folds in
    to that batch norm; those batch norms become identities (or their
    shuffle).
    """
    folded = folded or {}
    name = layer.name
    weights = layer.get_weights()
    if isinstance(layer, DeferredChannelShuffle):
        return x, []  # Shuffled after the depthwise conv's BN.
    if isinstance(layer, ChannelShuffle):
        return _shuffle(x, layer.groups, layer.order, name), []
    if isinstance(layer, keras.layers.Normalization):
        return _twin_normalization(layer, x), []
    if isinstance(layer, RowZeroPadding2D):
        return _twin_row_padding(layer, x), []
    if isinstance(layer, keras.layers.ZeroPadding2D):
        return LAYERS.ZeroPadding2D(layer.padding, name=name)(x), []
    if isinstance(layer, PointwiseGroupConv2D):
        conv = LAYERS.Conv2D(
            layer.filters, 1, groups=layer.groups, use_bias=layer.use_bias,
            name=name,
        )
        return conv(x), [(conv, weights)]
    if isinstance(layer, DepthwiseAveragePooling2D):
        # One scale where the depthwise kernels have one (its kernel is a
        # constant: either gives the same int8 values).
        return _twin_average_pool(layer, x, per_axis=not folded)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return _twin_depthwise(layer, x, folded.get(name))
    if isinstance(layer, keras.layers.Conv2D) and layer.groups == 1:
        conv = LAYERS.Conv2D(
            layer.filters, layer.kernel_size, strides=layer.strides,
            padding=layer.padding, use_bias=layer.use_bias,
            activation=_activation(layer), name=name,
        )
        return conv(x), [(conv, weights)]
    if isinstance(layer, keras.layers.BatchNormalization):
        folded_in = any(norm is layer for norm in folded.values())
        return _twin_batch_norm(layer, x, freeze_batch_norm, folded_in)
    if isinstance(layer, keras.layers.Dense):
        dense = LAYERS.Dense(
            layer.units, use_bias=layer.use_bias,
            activation=_activation(layer), name=name,
        )
        return dense(x), [(dense, weights)]
    return _twin_stateless(layer, x)


def _twin_stateless(layer, x):
    name = layer.name
    if type(layer) is keras.layers.ReLU and layer.max_value is None and not (
        layer.negative_slope or layer.threshold
    ):
        return LAYERS.ReLU(name=name)(x), []
    if type(layer) is keras.layers.Activation:
        return LAYERS.Activation(_activation(layer), name=name)(x), []
    if type(layer) is keras.layers.Add:
        return LAYERS.Add(name=name)(x), []
    if type(layer) is keras.layers.Multiply:
        # Squeeze-and-excitation's scaling: tfmot has no config for it.
        return QUANTIZE.quantize_annotate_layer(
            LAYERS.Multiply(name=name), OutputQuantizeConfig()
        )(x), []
    if type(layer) is keras.layers.Concatenate and layer.axis in (-1, 3):
        return LAYERS.Concatenate(name=name)(x), []
    if type(layer) is keras.layers.MaxPooling2D:
        return LAYERS.MaxPooling2D(
            layer.pool_size, layer.strides, padding=layer.padding, name=name
        )(x), []
    if type(layer) is keras.layers.GlobalAveragePooling2D:
        return LAYERS.GlobalAveragePooling2D(
            keepdims=layer.keepdims, name=name
        )(x), []
    raise UnsupportedLayerError(
        f"Layer {name!r} ({type(layer).__name__}) has no tf_keras twin for "
        "quantization-aware training. The twin takes ShuffleNet's layers "
        "(see keras_shufflenet.qat.twin)."
    )


# tf_keras runs each layer's `call` through AutoGraph while it builds a
# functional model. Neither our layers nor tfmot's wrappers branch on
# tensors, so the conversion only costs time: a third of `qat_model`'s.
# The models are the same: the same variables, bit-identical conversions.
without_autograph = tf.autograph.experimental.do_not_convert


@without_autograph
def tf_keras_twin(
    model, batch_size=None, freeze_batch_norm=False,
    per_tensor_depthwise=False,
):
    """Builds the `tf_keras` twin of a channels-last Keras 3 ShuffleNet.

    The twin computes the same function with the same weights (logits
    agree to about 1e-6 relative), in the graph `ShuffleNet`'s layers
    lower to at inference (`models.lowering`), so that its QAT model
    converts to the graph post-training quantization gives.

    Reference:
        Zhang et al., "ShuffleNet", section 3 and Table 1 (the network);
        section 4.5 (the deployed graph).

    Args:
        model: A functional Keras 3 model built by `ShuffleNet` (any scale,
            groups, `se`, `shallow`, `shuffle`), channels-last, with a
            static input size.
        batch_size: Static batch size of the twin's input. Defaults to
            None (any); conversion uses 1.
        freeze_batch_norm: Make the batch norms non-trainable, so that
            they normalise with their moving statistics when training too
            (see `qat_model`). Defaults to False.
        per_tensor_depthwise: Fold each depthwise conv's batch norm into
            it (a kernel times the norm's per-channel scale, and a bias)
            and quantize that kernel with one scale, for targets that take
            per-tensor weights. Folded before QAT, the kernel QAT rounds
            is the deployed one. Needs `freeze_batch_norm`. Defaults to
            False.

    Returns:
        A functional `tf_keras.Model` with the same layer names, holding
        copies of `model`'s weights.

    Raises:
        UnsupportedLayerError: `model` holds a layer the twin cannot
            express; the message names it.
    """
    if keras.config.image_data_format() != "channels_last" or any(
        getattr(layer, "data_format", "channels_last") != "channels_last"
        for layer in model.layers
    ):
        raise UnsupportedLayerError(
            f"Model {model.name!r}: QAT needs a channels-last model (TFLite "
            "runs NHWC); build it with image_data_format 'channels_last'."
        )
    if len(model.inputs) != 1 or None in model.input.shape[1:]:
        raise UnsupportedLayerError(
            f"Model {model.name!r}: QAT needs one image input of static "
            f"size. Received: input shape {model.input.shape}"
        )
    folded = {}
    if per_tensor_depthwise:
        if not freeze_batch_norm:
            raise ValueError(
                "`per_tensor_depthwise` folds batch norms into the depthwise "
                "convs, which is exact only for frozen ones: pass "
                "freeze_batch_norm=True."
            )
        folded = _depthwise_batch_norms(model)
    tensors = {}
    assigned = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            tensors[id(layer.output)] = tf_keras.Input(
                layer.output.shape[1:], batch_size=batch_size, name=layer.name
            )
            continue
        inputs = keras.tree.map_structure(
            lambda t: tensors[id(t)], layer.input
        )
        outputs, weights = _twin_layer(
            layer, inputs, freeze_batch_norm, folded
        )
        tensors[id(layer.output)] = outputs
        assigned += weights
    twin = tf_keras.Model(
        tensors[id(model.input)], tensors[id(model.output)], name=model.name
    )
    for twin_layer, values in assigned:
        twin_layer.set_weights(values)
    return twin


def copy_weights_back(twin, model):
    """Copies a twin's (possibly fine-tuned) weights into `model`.

    The inverse of `tf_keras_twin`'s copy: `tf_keras_twin(model)`, then
    this, leaves `model`'s weights bit for bit as they were.

    Args:
        twin: A `tf_keras_twin` of `model`, or its QAT model
            (`qat_model`), whose float weights are taken.
        model: The Keras 3 model the twin was built from, or one of the
            same architecture.
    """
    found = {}
    for layer in twin.layers:
        # QAT wraps layers, and the wrapper holds the float variables.
        found[getattr(layer, "layer", layer).name] = layer
    # Batch norms a `per_tensor_depthwise` twin folded: not in the twin.
    folded = {
        conv: norm for conv, norm in _depthwise_batch_norms(model).items()
        if norm.name not in found
    }
    norms = {norm.name for norm in folded.values()}
    for layer in model.layers:
        if (
            not layer.weights
            or isinstance(layer, DepthwiseAveragePooling2D)
            or layer.name in norms
        ):
            continue
        source = found.get(layer.name)
        if source is None:
            raise ValueError(
                f"The twin {twin.name!r} has no layer {layer.name!r}; it is "
                f"not a twin of {model.name!r}."
            )
        if layer.name in folded:
            _unfold(source, layer, folded[layer.name])
            continue
        layer.set_weights(_model_order(layer, _float_weights(source, layer)))


def _unfold(source, conv, norm):
    """Splits a folded depthwise conv back into `conv` and `norm`.

    The norm was frozen, so its scale, mean and variance are `norm`'s own;
    the kernel is divided by the scale, and the bias goes to the offset.
    """
    variables = _variables_by_name(source)
    stats = _twin_order_batch_norm(norm, norm.get_weights())
    scale = _fold_scale(norm, stats)
    kernel = variables["depthwise_kernel"].numpy() / scale[None, None, :, None]
    stats[1] = variables["bias"].numpy() + stats[2] * scale
    conv.set_weights(_model_order(conv, [kernel]))
    norm.set_weights(_model_order(norm, stats))


def _variables_by_name(source):
    """A twin layer's variables by their last name part."""
    return {v.name.split(":")[0].split("/")[-1]: v for v in source.weights}


def _float_weights(source, layer):
    """The float values of `source`'s variables named as `layer`'s."""
    by_name = _variables_by_name(source)
    names = [v.path.split("/")[-1] for v in layer.weights]
    # tf_keras names a depthwise kernel "depthwise_kernel", Keras 3 "kernel".
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        names = ["depthwise_kernel" if n == "kernel" else n for n in names]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(
            f"Twin layer {source.name!r} has no variables {missing} for "
            f"{layer.name!r}."
        )
    return [by_name[n].numpy() for n in names]
