"""The two conversions users already know, as they run them: Keras'
`model.export(path, format="litert")` and a SavedModel converted by
`tf.lite.TFLiteConverter`. The benchmark and the tests convert with them to
show that they give the same graph as `convert`.
"""

import os
import tempfile

import tensorflow as tf

from keras_shufflenet.lite.tflite_converter import representative_dataset
from keras_shufflenet.utils.checks import check_choice
from keras_shufflenet.utils.files import atomic_path
from keras_shufflenet.utils.files import write_atomic

# `convert`'s own route first, then the standard ones.
ROUTES = ("keras_shufflenet", "litert_export", "tflite_converter")
STANDARD_MODES = ("float32", "int8")


def _quantization(mode, calibration_data):
    """The converter settings a user passes for `mode`: none for float32;
    for int8, Keras' documented `optimizations` and `representative_dataset`
    (float input and output, int8 inside)."""
    check_choice("mode", mode, STANDARD_MODES)
    if mode == "float32":
        return {}
    if calibration_data is None:
        raise ValueError(
            "`calibration_data` is needed for mode='int8': images of the "
            "model's input shape."
        )
    return {
        "optimizations": [tf.lite.Optimize.DEFAULT],
        "representative_dataset": representative_dataset(calibration_data),
    }


def export_litert(model, path, mode="float32", calibration_data=None):
    """Converts `model` with `model.export(path, format="litert")`.

    The input keeps Keras' dynamic batch dimension.

    Args:
        model: A Keras model (TensorFlow backend).
        path: The `.tflite` file to write.
        mode: `"float32"` or `"int8"`. Defaults to `"float32"`.
        calibration_data: For int8, images calibrating the activations.

    Returns:
        `path`.
    """
    settings = _quantization(mode, calibration_data)
    # Atomic: a killed conversion leaves no partial file (the benchmark
    # caches by path).
    with atomic_path(os.fspath(path)) as tmp:
        model.export(tmp, format="litert", verbose=False, **settings)
    return path


def convert_with_tflite_converter(
    model, path, mode="float32", calibration_data=None
):
    """Converts `model` the TensorFlow way: `model.export(dir,
    format="tf_saved_model")`, then `tf.lite.TFLiteConverter.from_saved_model`
    with builtin ops only. Arguments and return value as `export_litert`'s.
    """
    settings = _quantization(mode, calibration_data)
    with tempfile.TemporaryDirectory() as saved_model:
        model.export(saved_model, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        for name, value in settings.items():
            setattr(converter, name, value)
        tflite = converter.convert()
    write_atomic(path, tflite)
    return path


STANDARD_ROUTES = {
    "litert_export": export_litert,
    "tflite_converter": convert_with_tflite_converter,
}
