"""The `tf.lite.TFLiteConverter` set-up for each quantization mode and
the quantization debugger that keeps chosen layers in float.
"""

import csv
import functools
import io
import math
import os
import re
import types
import warnings

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import interpreter
from tensorflow.lite.tools.optimize.debugging.python import debugger

from keras_shufflenet.lite.inspection import UnsupportedOpError
from keras_shufflenet.lite.inspection import op_name
from keras_shufflenet.lite.inspection import read_flatbuffer
from keras_shufflenet.utils.files import write_atomic

# How the MLIR converter names an op it cannot lower to a builtin.
_NON_BUILTIN_OP = re.compile(r"'tf\.(\w+)' op is neither a custom op")
DTYPES = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}


def check_images(images, size, argument):
    images = np.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(size) + (3,):
        raise ValueError(
            f"`{argument}` must be images of shape [n, {size[0]}, "
            f"{size[1]}, 3] (the export resolution). Received: shape="
            f"{images.shape}"
        )
    if len(images) == 0:
        raise ValueError(f"`{argument}` holds no images.")
    return images


def pin_pixel_range(images):
    """Makes the calibrated input range exactly [0, 255].

    The converter quantizes the input with the range it sees. With one
    pixel of one image set to 0 and another to 255, an int8 input has
    scale 1 and zero point -128 and a uint8 input scale 1 and zero point
    0: a camera frame goes in unchanged (int8: its bytes XOR 0x80), not
    rescaled by a range that depends on the calibration sample. Two pixels
    barely move the activation ranges downstream.
    """
    first = np.array(images[0], copy=True)
    first[0, 0] = 0
    first[-1, -1] = 255
    return np.concatenate([first[np.newaxis], images[1:]])


def representative_dataset(images):
    def generate():
        for image in images:
            yield [image[np.newaxis].astype(np.float32)]

    return generate


def float_node_names(float_tflite, selectors):
    """Maps `float_layers` selectors to TFLite node (output tensor) names.

    "first" selects every op from the input through the first CONV_2D
    (preprocessing and the stem convolution); "last" walks back from the
    model output through the first FULLY_CONNECTED or CONV_2D (the
    classifier, with its softmax). Any other selector is a Keras layer
    name, matched as a path component of the op's output tensor name
    (`model_1/conv1_1/convolution`): converted tensors keep the names of
    the SavedModel ops, with a `_<k>` uniquifying suffix.
    """
    model = read_flatbuffer(float_tflite)
    subgraph = model.subgraphs[0]
    operators = subgraph.operators
    kinds = [op_name(model, op.opcodeIndex) for op in operators]
    names = [
        [subgraph.tensors[t].name.decode() for t in op.outputs]
        for op in operators
    ]
    producer = {t: i for i, op in enumerate(operators) for t in op.outputs}
    selected = []
    for selector in selectors:
        if selector == "first":
            end = kinds.index("CONV_2D") if "CONV_2D" in kinds else -1
            found = list(range(end + 1))
        elif selector == "last":
            found = []
            tensor = subgraph.outputs[0]
            while tensor in producer:
                index = producer[tensor]
                found.append(index)
                if kinds[index] in ("FULLY_CONNECTED", "CONV_2D"):
                    break
                tensor = operators[index].inputs[0]
        else:
            pattern = re.compile(rf"(^|/){re.escape(selector)}(_\d+)?/")
            found = [
                i
                for i, outputs in enumerate(names)
                if any(
                    pattern.search(part)
                    for name in outputs
                    for part in name.split(";")
                )
            ]
        if not found:
            raise ValueError(
                f"`float_layers` entry {selector!r} matches no op of the "
                "converted graph. Use 'first', 'last' or Keras layer names "
                "such as 'stage2_unit1_gconv1'."
            )
        selected.extend(found)
    return [name for i in sorted(set(selected)) for name in names[i]]


def make_converter(saved_model_dir, mode, images, input_type, output_type,
               per_channel):
    converter = tf.lite.TFLiteConverter.from_saved_model(
        os.fspath(saved_model_dir)
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if input_type != "float32":
            images = pin_pixel_range(images)
        converter.representative_dataset = representative_dataset(images)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8
        ]
        converter.inference_input_type = DTYPES[input_type]
        converter.inference_output_type = DTYPES[output_type]
    elif mode == "int16x8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(images)
        ops_set = tf.lite.OpsSet
        converter.target_spec.supported_ops = [
            ops_set.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    if not per_channel:
        converter._experimental_disable_per_channel = True
    return converter


def run_converter(convert_fn, what):
    try:
        return convert_fn()
    except Exception as e:  # ConverterError is not public API.
        ops = sorted(set(_NON_BUILTIN_OP.findall(str(e))))
        if ops:
            raise UnsupportedOpError(
                f"{what} needs TensorFlow ops with no TFLite builtin "
                f"kernel: {ops}. Flex (SELECT_TF_OPS) and custom ops are "
                "refused because the pip LiteRT runtimes cannot run them; "
                "replace these ops in the model."
            ) from e
        raise


def debug_options(saved_model_dir, float_layers, what):
    nodes = None
    if float_layers:
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        nodes = float_node_names(
            run_converter(converter.convert, what), float_layers
        )
    return tf.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=nodes
    )


class _DebuggerWithoutDelegates:
    """Makes QuantizationDebugger's interpreters skip the XNNPACK delegate.

    The debugger builds `tf.lite.Interpreter`s with the default op
    resolver, which applies XNNPACK. XNNPACK rejects some valid int8 models
    at prepare time (see `xnnpack_scale_violations`), and the debug model
    is meant to be measured with TFLite's own kernels anyway, so the
    debugger module's interpreter factory is swapped for the duration.
    """

    def __enter__(self):


        self._module = debugger
        self._saved = debugger._interpreter
        debugger._interpreter = types.SimpleNamespace(
            Interpreter=functools.partial(
                interpreter.Interpreter,
                experimental_op_resolver_type=(
                    interpreter.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                ),
            )
        )
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        # It runs TF's deprecated tf.lite.Interpreter, and says so.
        warnings.simplefilter("ignore", UserWarning)
        return self

    def __exit__(self, *exc):
        self._module._interpreter = self._saved
        self._warnings.__exit__(*exc)


def quantization_debugger(converter, images, options, what):
    with _DebuggerWithoutDelegates():
        return run_converter(
            lambda: tf.lite.experimental.QuantizationDebugger(
                converter=converter,
                debug_dataset=representative_dataset(images),
                debug_options=options,
            ),
            what,
        )


def write_layer_csv(debugger, path):
    """Writes the debugger's per-layer statistics plus RMSE/scale.

    The debugger compares every quantized op's output with the float op
    fed the same (dequantized) input. RMSE/scale is the error in units of
    the quantization step: about 1/sqrt(12) = 0.29 is ideal rounding, and
    much larger values flag layers 8 bits serve badly.
    """
    with _DebuggerWithoutDelegates():
        debugger.run()
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    for row in rows:
        rmse = math.sqrt(float(row["mean_squared_error"]))
        scale = float(row["scale"])
        row["rmse"] = rmse
        row["rmse/scale"] = rmse / scale if scale else float("nan")
    fields = list(rows[0]) if rows else ["tensor_name", "rmse", "rmse/scale"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, out.getvalue().encode())
    return rows
