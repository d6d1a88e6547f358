"""The QAT model of a ShuffleNet (tfmot's 8-bit scheme on its `tf_keras`
twin) and its conversion to a full-int8 TFLite model.
"""

import os

import numpy as np
import tensorflow as tf

from keras_shufflenet.lite.inspection import check_builtin_ops
from keras_shufflenet.lite.inspection import make_interpreter
from keras_shufflenet.lite.inspection import op_list
from keras_shufflenet.qat.graph import range_variables
from keras_shufflenet.qat.layers import CUSTOM_OBJECTS
from keras_shufflenet.qat.layers import QUANTIZE
from keras_shufflenet.qat.twin import tf_keras_twin
from keras_shufflenet.qat.twin import without_autograph
from keras_shufflenet.utils.checks import check_choice
from keras_shufflenet.utils.files import write_atomic

QAT_INPUT_TYPES = ("float32", "int8", "uint8")
QAT_OUTPUT_TYPES = ("float32", "int8")
# The range integer inputs are pinned to: pixel values, as PTQ's.
PIXEL_RANGE = (0.0, 255.0)


def quantize_scope():
    """The `tfmot` scope under which a QAT model is built or loaded."""
    return QUANTIZE.quantize_scope(CUSTOM_OBJECTS)


@without_autograph
def qat_model(
    model_or_twin, freeze_batch_norm=True, per_tensor_depthwise=False
):
    """Wraps a ShuffleNet for quantization-aware training (8-bit).

    tfmot's default 8-bit scheme, as the TFLite converter quantizes:
    weights symmetric per channel (per tensor for the normalisation's
    constants), activations asymmetric per tensor with moving-average
    ranges, batch norm folded into the preceding convolution at
    conversion. The concatenation of a stride-2 unit quantizes its output
    once, for both inputs (`SharedRangeQuantizeConfig`).

    Batch norm is frozen by default, as Krishnamoorthi ("Quantizing deep
    convolutional networks for efficient inference", 2018) recommends: it
    normalises with the trained model's moving statistics when training
    too, so the activation ranges QAT learns are those of the deployed
    (folded) network, and batch statistics of small batches do not move
    them. The convolutions and the classifier train.

    Reference:
        Jacob et al., "Quantization and Training of Neural Networks for
        Efficient Integer-Arithmetic-Only Inference" (section 3); for the
        network, Zhang et al., "ShuffleNet", Table 1.

    Args:
        model_or_twin: A Keras 3 `ShuffleNet` (its twin is built with
            `tf_keras_twin`) or a twin.
        freeze_batch_norm: See above; for a Keras 3 model only (a twin
            is taken as built). Defaults to True.
        per_tensor_depthwise: One weight scale per depthwise kernel, its
            batch norm folded in first (`tf_keras_twin`); for a Keras 3
            model only. Defaults to False.

    Returns:
        A `tf_keras.Model` with fake-quantization, holding the weights.

    Raises:
        UnsupportedLayerError: A layer has no twin; the message names it.
    """
    twin = model_or_twin
    if not _is_tf_keras(twin):
        twin = tf_keras_twin(
            model_or_twin, freeze_batch_norm=freeze_batch_norm,
            per_tensor_depthwise=per_tensor_depthwise,
        )
    # Per-tensor weights only where the batch norm is folded in first:
    # per-tensor fake-quantization before a batch norm does not survive
    # folding it, and the converter leaves such convolutions in float
    # (`convert_qat` refuses the result).
    with quantize_scope():
        return QUANTIZE.quantize_model(twin)


def trainable_variables(model):
    """The variables of a `qat_model` that fine-tuning updates.

    tfmot's wrapper lists every weight it quantizes as trainable, the
    constants of the normalisation and of the average-pooled shortcut too;
    those stay what they are. The ranges learn by moving averages.

    Args:
        model: A `qat_model`.

    Returns:
        A list of variables.
    """
    variables = []
    for layer in model.layers:
        if getattr(layer, "layer", layer).trainable:
            variables += layer.trainable_weights
    return variables


def calibrate_ranges(model, twin, images, batch_size=32):
    """Sets a QAT model's activation ranges from the float twin's outputs.

    tfmot starts every activation range at [-6, 6] and moves it by a
    moving average of decay 0.999: a fine-tuning of a few hundred steps
    ends near where it started. Calibrated first, as post-training
    quantization calibrates, QAT starts from the ranges PTQ would use and
    fine-tunes from there.

    Reference:
        Krishnamoorthi, "Quantizing deep convolutional networks for
        efficient inference" (2018): QAT fine-tunes a calibrated model.

    Args:
        model: A `qat_model` of `twin`.
        twin: Its `tf_keras_twin`, holding the same float weights.
        images: Calibration images `[n, height, width, 3]`, pixel values
            (eval-style, e.g. `lite.calibration_images`).
        batch_size: Images per forward pass. Defaults to 32.
    """
    ranges = {
        wrapper.layer.name: found
        for wrapper in model.layers
        if hasattr(wrapper, "layer") and (found := range_variables(wrapper))
    }
    names = [n for n in ranges if n in {layer.name for layer in twin.layers}]
    probe = type(twin)(
        twin.input, [twin.get_layer(n).output for n in names]
    )
    low = {n: 0.0 for n in names}
    high = {n: 0.0 for n in names}
    for start in range(0, len(images), batch_size):
        outputs = probe(images[start:start + batch_size], training=False)
        for name, value in zip(names, outputs):
            value = value.numpy()
            low[name] = min(low[name], float(value.min()))
            high[name] = max(high[name], float(value.max()))
    for name in names:
        for variable in ranges[name]:
            variable.assign(
                low[name] if variable.name.endswith("min:0") else high[name]
            )


def calibrated_qat_model(model, images, batch_size=8):
    """A QAT model of `model` as fine-tuning starts: ranges calibrated.

    Its weights are `model`'s, its activation ranges calibrated on
    `images` (`calibrate_ranges`) and its weight ranges set by one
    training-mode pass, which changes no weight (batch norm is frozen).
    Converted, it is what QAT exports before any fine-tuning: the graph
    to time against post-training quantization's (`tflite/benchmark.py
    --qat`).

    Args:
        model: A Keras 3 `ShuffleNet`.
        images: Pixel images `[n, height, width, 3]`.
        batch_size: Images per calibration pass. Defaults to 8.

    Returns:
        A `qat_model`.
    """
    twin = tf_keras_twin(model, freeze_batch_norm=True)
    quantized = qat_model(twin)
    pin_input_range(quantized)
    calibrate_ranges(quantized, twin, images, batch_size)
    quantized(images[:batch_size], training=True)
    return quantized


def _is_tf_keras(model):
    return type(model).__module__.startswith("tf_keras")


def pin_input_range(model, value_range=PIXEL_RANGE):
    """Fixes the input quantizer's range to pixel values.

    A uint8 TFLite input then takes camera frames unchanged (scale 1, zero
    point 0), as `lite.convert` pins post-training quantization's. Call it
    before fine-tuning, so that QAT learns with the range it deploys with;
    the moving average keeps it, as every image spans [0, 255] or less.

    Args:
        model: A `qat_model`.
        value_range: `(min, max)`. Defaults to `(0, 255)`.
    """
    (layer,) = [
        layer for layer in model.layers
        if type(layer).__name__ == "QuantizeLayer"
    ]
    low, high = range_variables(layer)
    low.assign(value_range[0])
    high.assign(value_range[1])


def convert_qat(
    model,
    output_path=None,
    *,
    input_type="float32",
    output_type="float32",
):
    """Converts a QAT model to a builtin-ops-only, batch-1 int8 TFLite model.

    The converter reads the learned ranges (no calibration data). A static
    batch of 1 keeps the reshapes of the channel shuffle constant, with no
    SHAPE ops, as `lite.convert` does. Call `snap_biases` on the model
    first (as `QatTrainer` does) for it to add the biases this model's
    integer kernels add.

    Reference:
        Zhang et al., "ShuffleNet", section 4.5 (the deployed network).

    Args:
        model: A `qat_model`, fine-tuned.
        output_path: Where to write the `.tflite` atomically. Defaults to
            None (only return the bytes).
        input_type: "float32", "int8" or "uint8". Integer inputs are pixel
            values; call `pin_input_range` before fine-tuning. Defaults to
            "float32".
        output_type: "float32" or "int8". Defaults to "float32".

    Returns:
        The `.tflite` flatbuffer as bytes.
    """
    check_choice("input_type", input_type, QAT_INPUT_TYPES)
    check_choice("output_type", output_type, QAT_OUTPUT_TYPES)
    shape = [1, *model.input.shape[1:]]
    function = tf.function(
        lambda images: model(images, training=False), autograph=False
    )
    concrete = function.get_concrete_function(
        tf.TensorSpec(shape, tf.float32, name="image")
    )
    # The converter saves what it is given as a SavedModel first: given the
    # tf_keras model, it traces every layer's functions; given only the
    # variables, none.
    variables = tf.Module()
    variables.weights = list(model.weights)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [concrete], variables
    )
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if input_type != "float32":
        converter.inference_input_type = tf.dtypes.as_dtype(input_type)
    if output_type != "float32":
        converter.inference_output_type = tf.dtypes.as_dtype(output_type)
    tflite = converter.convert()
    check_builtin_ops(tflite)
    _check_integer(tflite, model.name)
    if output_path is not None:
        write_atomic(os.fspath(output_path), tflite)
    return tflite


# Ops that may run in float in a converted QAT model: the input and
# output conversions only.
_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}


def _check_integer(tflite, name):
    """Refuses a model the converter left partly in float."""
    interpreter = make_interpreter(tflite, delegate=False)
    float_tensors = [
        t["name"]
        for t in interpreter.get_tensor_details()
        if t["dtype"] == np.float32 and t["name"]
    ]
    ops = op_list(tflite)
    extra = len(float_tensors) - ops.count("QUANTIZE") - ops.count("DEQUANTIZE")
    if extra > 0:
        raise ValueError(
            f"The QAT model {name!r} converted with {extra} float tensors "
            "inside; a layer has no fake-quantization. Float tensors: "
            f"{float_tensors[:8]}"
        )
