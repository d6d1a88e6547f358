"""TFLite (LiteRT) export of ShuffleNet: conversion with post-training
quantization, per-model graph reports with XNNPACK coverage, and numerical
verification of a converted model against its Keras source."""

import collections
import csv
import dataclasses
import io
import math
import os
import re
import tempfile
import warnings

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from keras_shufflenet import deploy
from keras_shufflenet.files import write_atomic

MODES = ("float32", "float16", "dynamic", "int8", "int16x8")
INPUT_TYPES = ("float32", "int8", "uint8")
OUTPUT_TYPES = ("float32", "int8")
DEFAULT_NUM_CALIBRATION_IMAGES = 300
SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"
# Ops whose output passes its input's values through (quantization
# plumbing); looked through when asking what computed a model output.
_PASS_THROUGH_OPS = ("DEQUANTIZE", "QUANTIZE", "RESHAPE")
# How the MLIR converter names an op it cannot lower to a builtin.
_NON_BUILTIN_OP = re.compile(r"'tf\.(\w+)' op is neither a custom op")
_DTYPES = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}


class UnsupportedOpError(ValueError):
    """The graph needs an op outside TFLite's builtin set (e.g. Flex)."""


# ---------------------------------------------------------------------------
# Models in.
# ---------------------------------------------------------------------------


def load_model(
    model_path=None,
    weights=None,
    *,
    image_size=224,
    **shufflenet_kwargs,
):
    """Loads a `.keras` model or builds a ShuffleNet for export.

    Exactly one source is used: `model_path` (a whole `.keras` model), or
    `ShuffleNet(**shufflenet_kwargs)` built at `image_size` with the
    optional `weights` (a `.weights.h5`/`.keras` file) loaded into it.

    Reference:
        Zhang et al., ShuffleNet, section 3.3 (architecture arguments).

    Args:
        model_path: Path of a `.keras` model. Defaults to None.
        weights: Path of a weights file for the built ShuffleNet; only
            without `model_path`. Defaults to None (random weights).
        image_size: Input side of the built ShuffleNet. Defaults to 224.
        **shufflenet_kwargs: Arguments of `keras_shufflenet.ShuffleNet`
            (scale, groups, se, classes, ...).

    Returns:
        A `keras.Model`.

    Raises:
        FileNotFoundError: `model_path` or `weights` does not exist.
        ValueError: Both `model_path` and `weights`/ShuffleNet arguments
            were given, or the file is not a `.keras` model.
    """
    import keras

    from keras_shufflenet.shufflenet import ShuffleNet

    if model_path is not None:
        if weights is not None or shufflenet_kwargs:
            raise ValueError(
                "Give either `model_path` (a whole .keras model) or "
                "`weights`/ShuffleNet arguments, not both. Received: "
                f"model_path={model_path!r}, weights={weights!r}, "
                f"arguments={sorted(shufflenet_kwargs)}"
            )
        model_path = os.fspath(model_path)
        if not model_path.endswith(".keras"):
            raise ValueError(
                "`model_path` must be a .keras file. "
                f"Received: model_path={model_path!r}"
            )
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"Model file not found: {model_path}")
        return keras.saving.load_model(model_path, safe_mode=True)
    if weights is not None and not os.path.isfile(os.fspath(weights)):
        raise FileNotFoundError(f"Weights file not found: {weights}")
    return ShuffleNet(
        input_shape=(image_size, image_size, 3),
        weights=weights,
        **shufflenet_kwargs,
    )


def logits_model(model):
    """Returns `model` without its final softmax, so it outputs logits.

    Logits, not probabilities, are what the conversion checks compare:
    softmax saturates and hides differences.

    Args:
        model: A functional Keras model. If its last layer is an
            `Activation` (ShuffleNet's `predictions_activation`), it is
            dropped; otherwise `model` is returned unchanged.

    Returns:
        A `keras.Model` sharing `model`'s layers and weights.
    """
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Activation) and last.get_config()[
        "activation"
    ] not in ("linear", None):
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        logits = keras.Model(inputs, last.input, name=f"{model.name}_logits")
        # A deployment graph stays one: it is not rewritten again.
        options = getattr(model, "deployment_options", None)
        if options is not None:
            logits.deployment_options = options
        return logits
    return model


def input_size(model, image_size=None):
    """Returns the `(height, width)` a model is exported at.

    Args:
        model: A Keras model with one `(batch, height, width, 3)` input.
        image_size: Requested side or `(height, width)`. Defaults to the
            model's static input size.

    Returns:
        `(height, width)`.

    Raises:
        ValueError: No size is known, or it contradicts the model's.
    """
    shape = model.input_shape
    if isinstance(shape, list):
        raise ValueError(
            f"`model` must have one image input. Received: {len(shape)} "
            "inputs"
        )
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(
            "`model` must take (batch, height, width, 3) images. "
            f"Received: input_shape={shape}"
        )
    static = shape[1:3]
    if image_size is None:
        if None in static:
            raise ValueError(
                f"`model` has a dynamic input size {shape}; pass "
                "`image_size` to fix the exported resolution."
            )
        return tuple(static)
    size = (image_size, image_size) if np.isscalar(image_size) else tuple(
        image_size
    )
    if len(size) != 2 or min(size) < 1:
        raise ValueError(
            "`image_size` must be a positive int or (height, width). "
            f"Received: image_size={image_size!r}"
        )
    if None not in static and tuple(static) != size:
        raise ValueError(
            f"`image_size`={size} differs from the model's fixed input "
            f"size {tuple(static)}; rebuild the model with input_shape="
            f"{size + (3,)} or (None, None, 3)."
        )
    return size


def export_saved_model(model, path, image_size=None, mode="float32"):
    """Writes the deployment graph of `model` as a batch-1 SavedModel.

    The graph is `deploy.deployment_model(model)` with the rewrites that
    suit the conversion `mode` (`deploy.rewrites_for`) and one signature,
    `serving_default`, taking float32 `images` of shape
    `(1, height, width, 3)`. The static batch of 1 matters: a dynamic batch
    leaves SHAPE/STRIDED_SLICE/PACK ops in the TFLite graph, outside
    XNNPACK. (`model.export` ignores `keras.Input`'s batch size, hence the
    explicit signature.)

    Args:
        model: A functional Keras model with one image input.
        path: Directory to write.
        image_size: Input side or `(height, width)`. Defaults to the
            model's static input size.
        mode: The conversion mode the SavedModel is for (see `convert`).
            Defaults to "float32".

    Returns:
        `(height, width)` of the exported input.
    """
    size = input_size(model, image_size)
    deployed = deploy.deployment_model(
        model, rewrites=deploy.rewrites_for(mode)
    )
    spec = tf.TensorSpec((1,) + size + (3,), tf.float32, name=INPUT_NAME)
    deployed.export(
        os.fspath(path),
        format="tf_saved_model",
        input_signature=[spec],
        verbose=False,
    )
    return size


# ---------------------------------------------------------------------------
# Calibration data.
# ---------------------------------------------------------------------------


def calibration_images(
    config, num_images=DEFAULT_NUM_CALIBRATION_IMAGES, split="train"
):
    """Returns centre-cropped images to calibrate int8 quantization.

    The images go through the evaluation pipeline of
    `keras_shufflenet.data` (shorter side resized to `size / crop_fraction`,
    centre crop), never the training augmentation, so activation ranges
    are measured on the inputs the deployed model sees. By default they
    come from the training data, which keeps the evaluation split
    untouched for measuring the quantized model.

    The split is read in order, so the first `num_images` should be a
    sample across classes: TFDS and TFRecord ImageNet shards are
    shuffled, but a class-folder tree lists its files class by class
    (point `train_path` at a sampled folder, or use TFDS).

    Reference:
        Zhang et al., ShuffleNet, section 4 (single centre-crop
        evaluation).

    Args:
        config: A `keras_shufflenet.data.InputConfig`.
        num_images: Number of images. Defaults to 300.
        split: "train" (the training data: `train_split`/`train_path`, or
            the digits training split) or "eval". Defaults to "train".

    Returns:
        uint8 array `[n, size, size, 3]` with `n = min(num_images, split
        size)`.
    """
    from keras_shufflenet import data

    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(
            "`num_images` must be a positive int. "
            f"Received: num_images={num_images!r}"
        )
    _check_choice(split, ("train", "eval"), "split")
    if split == "train":
        if config.source == "digits":
            (images, _), _ = data.load_digits_arrays(config.image_size)
            return images[:num_images]
        if config.source == "tfds":
            config = dataclasses.replace(
                config, eval_split=config.train_split,
                num_eval_examples=config.num_train_examples,
            )
        else:
            if not config.train_path:
                raise ValueError(
                    "Calibrating on training images needs `train_path` for "
                    f"source={config.source!r}; set it, or use split='eval'."
                )
            config = dataclasses.replace(
                config, eval_path=config.train_path, train_path=None,
                num_eval_examples=config.num_train_examples,
            )
    pipeline = data.InputPipeline(config)
    batches = []
    count = 0
    for images, _, weights in pipeline.dataset(False, 32):
        keep = weights.numpy() > 0
        batches.append(images.numpy()[keep])
        count += int(keep.sum())
        if count >= num_images:
            break
    if count == 0:
        raise ValueError(f"The {split} split holds no images to calibrate.")
    return np.concatenate(batches)[:num_images]


def _check_images(images, size, argument):
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


def _pin_pixel_range(images):
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


def _representative_dataset(images):
    def generate():
        for image in images:
            yield [image[np.newaxis].astype(np.float32)]

    return generate


# ---------------------------------------------------------------------------
# Conversion.
# ---------------------------------------------------------------------------


def _check_choice(value, choices, argument):
    if value not in choices:
        raise ValueError(
            f"`{argument}` must be one of {choices}. "
            f"Received: {argument}={value!r}"
        )


def _float_node_names(float_tflite, selectors):
    """Maps `float_layers` selectors to TFLite node (output tensor) names.

    "first" selects every op from the input through the first CONV_2D
    (preprocessing and the stem convolution); "last" walks back from the
    model output through the first FULLY_CONNECTED or CONV_2D (the
    classifier, with its softmax). Any other selector is a Keras layer
    name, matched as a path component of the op's output tensor name
    (`model_1/conv1_1/convolution`): converted tensors keep the names of
    the SavedModel ops, with a `_<k>` uniquifying suffix.
    """
    model = _flatbuffer(float_tflite)
    subgraph = model.subgraphs[0]
    operators = subgraph.operators
    kinds = [_op_name(model, op.opcodeIndex) for op in operators]
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


def _converter(saved_model_dir, mode, images, input_type, output_type,
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
            images = _pin_pixel_range(images)
        converter.representative_dataset = _representative_dataset(images)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8
        ]
        converter.inference_input_type = _DTYPES[input_type]
        converter.inference_output_type = _DTYPES[output_type]
    elif mode == "int16x8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative_dataset(images)
        ops_set = tf.lite.OpsSet
        converter.target_spec.supported_ops = [
            ops_set.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    if not per_channel:
        converter._experimental_disable_per_channel = True
    return converter


def _run_converter(convert_fn, what):
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


def convert_saved_model(
    saved_model_dir,
    output_path=None,
    *,
    mode="float32",
    calibration_data=None,
    num_calibration_images=DEFAULT_NUM_CALIBRATION_IMAGES,
    input_type="float32",
    output_type="float32",
    per_channel=True,
    float_layers=(),
    debug_csv=None,
):
    """Converts a batch-1 SavedModel to a builtin-ops-only TFLite model.

    See `convert` for the arguments; this is its second half, for callers
    converting one SavedModel (from `export_saved_model`) several ways.

    Reference:
        Zhang et al., ShuffleNet, section 4 (the evaluated network).

    Returns:
        The `.tflite` flatbuffer as bytes.
    """
    return _convert_saved_model(
        saved_model_dir,
        output_path,
        f"SavedModel {os.fspath(saved_model_dir)}",
        mode=mode,
        calibration_data=calibration_data,
        num_calibration_images=num_calibration_images,
        input_type=input_type,
        output_type=output_type,
        per_channel=per_channel,
        float_layers=float_layers,
        debug_csv=debug_csv,
    )


def _convert_saved_model(
    saved_model_dir,
    output_path,
    what,
    *,
    mode,
    calibration_data,
    num_calibration_images,
    input_type,
    output_type,
    per_channel,
    float_layers,
    debug_csv,
):
    _check_choice(mode, MODES, "mode")
    _check_choice(input_type, INPUT_TYPES, "input_type")
    _check_choice(output_type, OUTPUT_TYPES, "output_type")
    if mode != "int8" and (input_type, output_type) != ("float32", "float32"):
        raise ValueError(
            "`input_type`/`output_type` other than float32 need "
            f"mode='int8'. Received: mode={mode!r}, input_type="
            f"{input_type!r}, output_type={output_type!r}"
        )
    if mode != "int8" and (float_layers or debug_csv):
        raise ValueError(
            "`float_layers` and `debug_csv` apply to mode='int8'. "
            f"Received: mode={mode!r}"
        )
    if isinstance(float_layers, str):
        float_layers = [float_layers]
    float_layers = list(float_layers or ())
    if float_layers and (input_type, output_type) != ("float32", "float32"):
        # Selective quantization (QuantizationDebugger) keeps float I/O.
        raise ValueError(
            "`float_layers` needs float32 input and output. Received: "
            f"input_type={input_type!r}, output_type={output_type!r}"
        )
    saved_model_dir = os.fspath(saved_model_dir)
    if not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
        raise FileNotFoundError(
            f"No SavedModel (saved_model.pb) in {saved_model_dir}"
        )
    images = None
    if mode in ("int8", "int16x8"):
        if calibration_data is None:
            raise ValueError(
                f"mode={mode!r} needs `calibration_data`: evaluation-style "
                "images, e.g. from `calibration_images(config)`."
            )
        size = _saved_model_input_size(saved_model_dir)
        images = _check_images(calibration_data, size, "calibration_data")
        if not isinstance(num_calibration_images, int) or (
            num_calibration_images < 1
        ):
            raise ValueError(
                "`num_calibration_images` must be a positive int. Received: "
                f"num_calibration_images={num_calibration_images!r}"
            )
        images = images[:num_calibration_images]
    converter = _converter(
        saved_model_dir, mode, images, input_type, output_type, per_channel
    )
    if debug_csv:
        # The debugger re-targets its converter, so it gets its own.
        debugger = _quantization_debugger(
            _converter(saved_model_dir, mode, images, input_type,
                       output_type, per_channel),
            images,
            _debug_options(saved_model_dir, float_layers, what),
            what,
        )
        _write_layer_csv(debugger, debug_csv)
    tflite = None
    if "auto" in float_layers:
        plain = _run_converter(converter.convert, what)
        auto = [
            v["layer"] for v in xnnpack_scale_violations(plain) if v["layer"]
        ]
        float_layers = [n for n in float_layers if n != "auto"] + auto
        if not float_layers:
            tflite = plain
        converter = _converter(
            saved_model_dir, mode, images, input_type, output_type,
            per_channel,
        )
    if tflite is None and not float_layers:
        tflite = _run_converter(converter.convert, what)
    elif tflite is None:
        # Float islands need the float kernels next to the int8 ones.
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
        debugger = _quantization_debugger(
            converter,
            images,
            _debug_options(saved_model_dir, float_layers, what),
            what,
        )
        tflite = _run_converter(debugger.get_nondebug_quantized_model, what)
    if mode == "int8":
        violations = xnnpack_scale_violations(tflite)
        if violations:
            layers = sorted({str(v["layer"]) for v in violations})
            warnings.warn(
                f"{what}: XNNPACK cannot prepare this int8 model: layers "
                f"{layers} have a requantization scale >= 256 (near-zero "
                "batch-norm variance folded into the weights). LiteRT's "
                "default CPU setup will fail to load it; convert with "
                "float_layers=['auto'] to keep those layers in float.",
                stacklevel=3,
            )
    check_builtin_ops(tflite)
    if output_path is not None:
        write_atomic(output_path, tflite)
    return tflite


def _saved_model_input_size(saved_model_dir):
    # The signature is in the proto; `tf.saved_model.load` would rebuild
    # every function (seconds) to read two numbers.
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    signature = saved_model.meta_graphs[0].signature_def[SIGNATURE_KEY]
    (tensor_info,) = signature.inputs.values()
    return tuple(d.size for d in tensor_info.tensor_shape.dim[1:3])


def _debug_options(saved_model_dir, float_layers, what):
    nodes = None
    if float_layers:
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        nodes = _float_node_names(
            _run_converter(converter.convert, what), float_layers
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
        import functools
        import types

        from tensorflow.lite.python import interpreter
        from tensorflow.lite.tools.optimize.debugging.python import debugger

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


def _quantization_debugger(converter, images, options, what):
    with _DebuggerWithoutDelegates():
        return _run_converter(
            lambda: tf.lite.experimental.QuantizationDebugger(
                converter=converter,
                debug_dataset=_representative_dataset(images),
                debug_options=options,
            ),
            what,
        )


def _write_layer_csv(debugger, path):
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


def convert(
    model,
    output_path=None,
    *,
    mode="float32",
    image_size=None,
    calibration_data=None,
    num_calibration_images=DEFAULT_NUM_CALIBRATION_IMAGES,
    input_type="float32",
    output_type="float32",
    per_channel=True,
    float_layers=(),
    debug_csv=None,
    logits=False,
):
    """Converts a Keras model to a builtin-ops-only, batch-1 TFLite model.

    The route is `deploy.deployment_model(model)` (with the mode's
    `deploy.rewrites_for`) -> SavedModel with a
    fixed `(1, height, width, 3)` float32 signature ->
    `tf.lite.TFLiteConverter.from_saved_model` with the TFLite builtin op
    set only. A graph needing a Flex (SELECT_TF_OPS) op raises
    `UnsupportedOpError` rather than producing a model that pip LiteRT
    cannot run.

    Modes: "float32"; "float16" (weights stored as float16, run in float32
    by XNNPACK); "dynamic" (dynamic-range: int8 weights, float
    activations); "int8" (full integer: int8 weights, per channel unless
    `per_channel=False`, and int8 activations calibrated on
    `calibration_data`); "int16x8" (int16 activations, int8 weights: the
    accuracy of float for long-tailed activations, but XNNPACK has no
    int16 kernels, so it runs on TFLite's slower builtin kernels).

    Reference:
        Zhang et al., ShuffleNet, section 4 (the evaluated network); the
        quantization follows TFLite post-training quantization.

    Args:
        model: A functional Keras model taking RGB images, e.g.
            `ShuffleNet(...)`.
        output_path: Where to write the `.tflite` atomically. Defaults to
            None (only return the bytes).
        mode: One of "float32", "float16", "dynamic", "int8", "int16x8".
            Defaults to "float32".
        image_size: Input side or `(height, width)`. Defaults to the
            model's static input size.
        calibration_data: For "int8" and "int16x8": images `[n, height,
            width, 3]` (uint8 or float pixel values as the model takes them)
            from the
            evaluation pipeline, e.g. `calibration_images(config)`.
        num_calibration_images: Images of `calibration_data` used.
            Defaults to 300.
        input_type: For "int8": "float32", "int8" or "uint8". Integer
            inputs are pixel values: the calibrated input range is pinned
            to [0, 255], so a uint8 frame goes in unchanged (scale 1) and
            an int8 input is the frame minus 128. Defaults to "float32".
        output_type: For "int8": "float32" or "int8". Defaults to
            "float32".
        per_channel: Per-channel weight scales for int8. Defaults to True.
        float_layers: For "int8": what to keep in float, via
            `tf.lite.experimental.QuantizationDebugger`'s
            `denylisted_nodes`: "first" (preprocessing and stem conv),
            "last" (the classifier), "auto" (the layers XNNPACK cannot run
            in int8, see `xnnpack_scale_violations`) or Keras layer names.
            Needs float32 input and output. Defaults to () (all
            quantized).
        debug_csv: For "int8": path of a CSV of per-layer quantization
            error (RMSE, scale, RMSE/scale) from the QuantizationDebugger.
            Defaults to None.
        logits: Drop a final softmax so the model outputs logits. Defaults
            to False.

    Returns:
        The `.tflite` flatbuffer as bytes.

    Raises:
        ValueError: A bad argument; the message names it.
        UnsupportedOpError: The graph needs non-builtin (Flex) ops.
    """
    if logits:
        model = logits_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        saved_model_dir = os.path.join(tmp, "saved_model")
        export_saved_model(model, saved_model_dir, image_size, mode)
        return _convert_saved_model(
            saved_model_dir,
            output_path,
            f"Model {model.name!r}",
            mode=mode,
            calibration_data=calibration_data,
            num_calibration_images=num_calibration_images,
            input_type=input_type,
            output_type=output_type,
            per_channel=per_channel,
            float_layers=float_layers,
            debug_csv=debug_csv,
        )


def quantize_with_ai_edge_quantizer(
    float_tflite,
    calibration_data,
    output_path=None,
    *,
    num_calibration_images=DEFAULT_NUM_CALIBRATION_IMAGES,
    recipe="static_wi8_ai8",
):
    """Quantizes a float32 `.tflite` with the LiteRT AI Edge Quantizer.

    The LiteRT documentation recommends this quantizer over the
    converter's built-in quantization. Its `static_wi8_ai8` recipe gives
    int8 weights (per channel) and int8 activations, and (v0.10) int8
    model input and output too, with the input scale taken from the
    calibration range rather than fixed to pixel steps. It does not run
    the converter's checks, so check `xnnpack_scale_violations`.

    Args:
        float_tflite: Bytes or path of a float32 model from `convert`.
        calibration_data: Evaluation-style images `[n, height, width, 3]`.
        output_path: Where to write the quantized model. Defaults to None.
        num_calibration_images: Images used. Defaults to 300.
        recipe: A recipe function name of `ai_edge_quantizer.recipe`, e.g.
            "static_wi8_ai8" or "dynamic_wi8_afp32". Defaults to
            "static_wi8_ai8".

    Returns:
        The quantized `.tflite` flatbuffer as bytes.
    """
    from ai_edge_quantizer import quantizer as aeq_quantizer
    from ai_edge_quantizer import recipe as aeq_recipe

    float_tflite = _model_bytes(float_tflite, "float_tflite")
    recipe_fn = getattr(aeq_recipe, recipe, None)
    if recipe_fn is None or recipe.startswith("_"):
        raise ValueError(
            "`recipe` must name a function of ai_edge_quantizer.recipe, "
            f"e.g. 'static_wi8_ai8'. Received: recipe={recipe!r}"
        )
    interpreter = _interpreter(float_tflite, delegate=False)
    (detail,) = interpreter.get_input_details()
    size = tuple(int(d) for d in detail["shape"][1:3])
    images = _check_images(calibration_data, size, "calibration_data")
    images = images[:num_calibration_images]
    (input_name,) = interpreter.get_signature_list()[SIGNATURE_KEY]["inputs"]
    quantizer = aeq_quantizer.Quantizer(float_tflite, recipe_fn())
    calibration = None
    samples = [
        {input_name: image[np.newaxis].astype(np.float32)} for image in images
    ]
    with warnings.catch_warnings():
        # It keeps every tensor to record ranges, and warns it does.
        warnings.simplefilter("ignore", UserWarning)
        if quantizer.need_calibration:
            calibration = quantizer.calibrate({SIGNATURE_KEY: samples})
        result = quantizer.quantize(calibration, enable_progress_report=False)
    tflite = bytes(result.quantized_model)
    check_builtin_ops(tflite)
    if output_path is not None:
        write_atomic(output_path, tflite)
    return tflite


# ---------------------------------------------------------------------------
# Inspection: op list, Flex check, XNNPACK coverage, tensor ranks.
# ---------------------------------------------------------------------------


def _model_bytes(tflite, argument="tflite"):
    if isinstance(tflite, (bytes, bytearray, memoryview)):
        return bytes(tflite)
    if isinstance(tflite, (str, os.PathLike)):
        path = os.fspath(tflite)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"TFLite model not found: {path}")
        with open(path, "rb") as f:
            return f.read()
    raise ValueError(
        f"`{argument}` must be .tflite bytes or a path. Received: "
        f"{type(tflite).__name__}"
    )


def _interpreter(tflite, delegate=True, num_threads=1):
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.interpreter import OpResolverType

    resolver = (
        OpResolverType.AUTO
        if delegate
        else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter = Interpreter(
        model_content=_model_bytes(tflite),
        experimental_op_resolver_type=resolver,
        num_threads=num_threads,
    )
    interpreter.allocate_tensors()
    return interpreter


def _flatbuffer(tflite):
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))


def _op_name(model, opcode_index):
    from ai_edge_litert.tools import flatbuffer_utils

    code = model.operatorCodes[opcode_index]
    if code.customCode:
        return code.customCode.decode("ascii")
    return flatbuffer_utils.opcode_to_name(model, opcode_index)


def op_list(tflite):
    """Returns the ops of every subgraph of a `.tflite`, in order.

    Args:
        tflite: `.tflite` bytes or path.

    Returns:
        A list of op names: builtin names such as "CONV_2D", or the custom
        code (e.g. "FlexConv2D") for custom ops.
    """
    model = _flatbuffer(_model_bytes(tflite))
    return [
        _op_name(model, op.opcodeIndex)
        for subgraph in model.subgraphs
        for op in subgraph.operators
    ]


def check_builtin_ops(tflite):
    """Raises `UnsupportedOpError` if a `.tflite` has non-builtin ops.

    Flex ops (TF kernels, "Flex..." custom ops) need the
    SELECT_TF_OPS runtime, which pip LiteRT interpreters do not have
    (google-ai-edge/LiteRT#6458); other custom ops need registration.

    Args:
        tflite: `.tflite` bytes or path.
    """
    model = _flatbuffer(_model_bytes(tflite))
    custom = sorted(
        {
            code.customCode.decode("ascii")
            for code in model.operatorCodes
            if code.customCode
        }
    )
    if custom:
        flex = [name for name in custom if name.startswith("Flex")]
        kind = "Flex (SELECT_TF_OPS)" if flex else "custom"
        raise UnsupportedOpError(
            f"The TFLite model has {kind} ops {custom}; only builtin ops "
            "are allowed, as the pip LiteRT runtimes cannot run Flex ops."
        )


# XNNPACK's int8 convolutions and fully connected layers need each output
# channel's requantization scale (input scale x filter scale / output
# scale) below 256; a larger one fails delegate preparation.
XNNPACK_MAX_REQUANTIZATION_SCALE = 256.0
_WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def xnnpack_scale_violations(tflite):
    """Lists int8 ops whose requantization scale XNNPACK cannot run.

    A BN-folded depthwise channel whose batch variance is near zero gets a
    filter scale so large that `input_scale * filter_scale / output_scale`
    reaches 256; XNNPACK then fails to prepare the whole model. Such a
    channel is also destroyed by int8 anyway: one input step moves its
    output by hundreds of steps.

    Args:
        tflite: `.tflite` bytes or path.

    Returns:
        A list of dicts: `op`, `index`, `tensor` (output name), `layer`
        (the Keras layer name read from it, or None), `max_scale` and
        `channels` (how many exceed the limit).
    """
    model = _flatbuffer(_model_bytes(tflite))
    subgraph = model.subgraphs[0]

    def scales(index):
        q = subgraph.tensors[index].quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            return None
        return np.asarray(q.scale, np.float64)

    found = []
    for index, op in enumerate(subgraph.operators):
        name = _op_name(model, op.opcodeIndex)
        if name not in _WEIGHTED_OPS:
            continue
        x, w, y = (scales(op.inputs[0]), scales(op.inputs[1]),
                   scales(op.outputs[0]))
        if x is None or w is None or y is None:
            continue
        ratio = x[0] * w / y[0]
        bad = ratio >= XNNPACK_MAX_REQUANTIZATION_SCALE
        if bad.any():
            tensor = subgraph.tensors[op.outputs[0]].name.decode()
            found.append(
                {
                    "op": name,
                    "index": index,
                    "tensor": tensor,
                    "layer": _layer_of(tensor),
                    "max_scale": float(ratio.max()),
                    "channels": int(bad.sum()),
                }
            )
    return found


def _layer_of(tensor_name):
    """The Keras layer in `model_1/layer_1/op`, or None."""
    parts = tensor_name.split(";")[0].split("/")
    if len(parts) < 3:
        return None
    return re.sub(r"_\d+$", "", parts[1])


def xnnpack_coverage(tflite, num_threads=1):
    """Measures which ops of a `.tflite` the XNNPACK delegate takes.

    How: LiteRT's Python interpreter applies XNNPACK by default. Each
    partition XNNPACK claims becomes one "DELEGATE" node appended after the
    model's own nodes; the replaced nodes stay in the node list but leave
    the execution plan. A delegate node's inputs and outputs are its
    partition's boundary tensors, and partitions are closed subgraphs, so
    walking producers back from a delegate node's outputs until its inputs
    recovers exactly the nodes it replaced. Every other node runs on a
    builtin CPU kernel.

    Args:
        tflite: `.tflite` bytes or path.
        num_threads: Interpreter threads. Defaults to 1.

    Returns:
        A dict: `partitions` (delegate nodes), `pieces` (nodes in the
        execution plan: partitions plus ops left out; 1 means XNNPACK runs
        the whole graph), `delegated_ops` (count), `ops_left_out`
        (`{op name: count}`) and `total_ops`. When XNNPACK fails to prepare
        the model (LiteRT then refuses to run it with default settings),
        `pieces` is None, `error` holds the message and `scale_violations`
        the likely cause.
    """
    tflite = _model_bytes(tflite)
    model = _flatbuffer(tflite)
    operators = model.subgraphs[0].operators
    total = len(operators)
    try:
        interpreter = _interpreter(tflite, delegate=True,
                                   num_threads=num_threads)
    except RuntimeError as e:
        # XNNPACK claimed a partition, then failed to build it.
        return {
            "partitions": None,
            "pieces": None,
            "delegated_ops": 0,
            "ops_left_out": {},
            "total_ops": total,
            "error": str(e),
            "scale_violations": xnnpack_scale_violations(tflite),
        }
    producer = {}
    for index, op in enumerate(operators):
        for tensor in op.outputs:
            producer[tensor] = index
    delegated = set()
    partitions = 0
    for node in range(total, interpreter._interpreter.NumNodes()):
        partitions += 1
        boundary = set(interpreter._interpreter.NodeInputs(node))
        stack = list(interpreter._interpreter.NodeOutputs(node))
        while stack:
            tensor = stack.pop()
            if tensor in boundary or tensor not in producer:
                continue
            index = producer[tensor]
            if index in delegated:
                continue
            delegated.add(index)
            stack.extend(t for t in operators[index].inputs if t >= 0)
    left = collections.Counter(
        _op_name(model, operators[i].opcodeIndex)
        for i in range(total)
        if i not in delegated
    )
    return {
        "partitions": partitions,
        "pieces": partitions + sum(left.values()),
        "delegated_ops": len(delegated),
        "ops_left_out": dict(sorted(left.items())),
        "total_ops": total,
    }


def _io_details(model, tensor_indices):
    """Name, shape, dtype and per-tensor quantization of I/O tensors."""
    from ai_edge_litert.tools import flatbuffer_utils

    subgraph = model.subgraphs[0]
    out = []
    for index in tensor_indices:
        tensor = subgraph.tensors[index]
        q = tensor.quantization
        scales = [] if q is None or q.scale is None else list(q.scale)
        zero_points = (
            [] if q is None or q.zeroPoint is None else list(q.zeroPoint)
        )
        out.append(
            {
                "name": tensor.name.decode(),
                "shape": [int(d) for d in tensor.shape],
                "dtype": flatbuffer_utils.type_to_name(tensor.type).lower(),
                "scale": float(scales[0]) if len(scales) == 1 else None,
                "zero_point": (
                    int(zero_points[0]) if len(zero_points) == 1 else None
                ),
            }
        )
    return out


def model_report(tflite, num_threads=1):
    """Describes a `.tflite` for deployment: size, ops, XNNPACK, ranks.

    Reference:
        Zhang et al., ShuffleNet, section 4.1 (the operations that make up
        the network and their cost on mobile devices).

    Args:
        tflite: `.tflite` bytes or path.
        num_threads: Interpreter threads for the XNNPACK check. Defaults
            to 1.

    Returns:
        A JSON-serialisable dict: `size_bytes`; `num_ops` and `ops`
        (`{op name: count}` over all subgraphs); `flex_ops` (custom op
        names, should be empty); `xnnpack` (see `xnnpack_coverage`);
        `max_tensor_rank` and `tensor_ranks` (`{rank: count}`); `inputs`
        and `outputs` (name, shape, dtype, quantization scale/zero point).
    """
    tflite = _model_bytes(tflite)
    model = _flatbuffer(tflite)
    ops = op_list(tflite)
    ranks = collections.Counter(
        len(tensor.shape if tensor.shape is not None else ())
        for subgraph in model.subgraphs
        for tensor in subgraph.tensors
    )
    custom = sorted(
        {c.customCode.decode("ascii") for c in model.operatorCodes
         if c.customCode}
    )
    # A model the interpreter cannot load (Flex ops) still gets a report.
    xnnpack = None
    if not custom:
        xnnpack = xnnpack_coverage(tflite, num_threads=num_threads)
    return {
        "size_bytes": len(tflite),
        "num_ops": len(ops),
        "ops": dict(sorted(collections.Counter(ops).items())),
        "flex_ops": custom,
        "xnnpack": xnnpack,
        "max_tensor_rank": max(ranks) if ranks else 0,
        "tensor_ranks": {str(k): v for k, v in sorted(ranks.items())},
        "inputs": _io_details(model, model.subgraphs[0].inputs),
        "outputs": _io_details(model, model.subgraphs[0].outputs),
    }


def format_report(report, title=None):
    """Renders `model_report` output as a plain-text table.

    Args:
        report: A dict from `model_report`.
        title: Optional first line. Defaults to None.

    Returns:
        A multi-line string.
    """
    x = report["xnnpack"]
    lines = [title] if title else []
    io = lambda d: (  # noqa: E731
        f"{d['dtype']}{d['shape']}"
        + (f" scale={d['scale']:.4g} zp={d['zero_point']}"
           if d["scale"] else "")
    )
    lines += [
        f"  size            {report['size_bytes'] / 1024:.1f} KiB",
        f"  inputs          {', '.join(io(d) for d in report['inputs'])}",
        f"  outputs         {', '.join(io(d) for d in report['outputs'])}",
        f"  ops             {report['num_ops']}",
    ]
    lines += [f"    {name:<24}{n:>5}" for name, n in report["ops"].items()]
    if x is None:
        lines.append("  XNNPACK         not loadable (custom ops)")
    elif x["pieces"] is None:
        layers = ", ".join(
            f"{v['layer']} ({v['max_scale']:.0f})"
            for v in x["scale_violations"]
        )
        lines.append(
            "  XNNPACK         FAILS TO PREPARE: requantization scale >= "
            f"256 in {layers or 'unknown ops'}; convert with "
            "float_layers=['auto']"
        )
    else:
        left = ", ".join(f"{k} x{v}" for k, v in x["ops_left_out"].items())
        lines += [
            f"  XNNPACK pieces  {x['pieces']} ({x['partitions']} delegated "
            f"partitions, {x['delegated_ops']}/{x['total_ops']} ops)",
            f"  left out        {left or 'none'}",
        ]
    lines += [
        f"  max tensor rank {report['max_tensor_rank']}",
        f"  flex/custom ops {', '.join(report['flex_ops']) or 'none'}",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Running and verification.
# ---------------------------------------------------------------------------


def _quantize_input(images, detail):
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return images.astype(np.float32)
    scale, zero_point = detail["quantization"]
    if dtype == images.dtype and abs(scale - 1.0) < 1e-6 and zero_point == 0:
        return images
    info = np.iinfo(dtype)
    q = np.round(images.astype(np.float32) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize_output(values, detail):
    if np.dtype(detail["dtype"]) == np.float32:
        return values
    scale, zero_point = detail["quantization"]
    return (values.astype(np.float32) - zero_point) * scale


class TFLiteModel:
    """Runs a single-input, single-output `.tflite` image classifier.

    Float pixel values go in whatever the model's input type: they are
    quantized with the input tensor's scale and zero point when it is
    int8/uint8 (uint8 frames pass unchanged when the scale is 1), and an
    int8 output is dequantized, so results compare directly with Keras.

    Args:
        tflite: `.tflite` bytes or path.
        num_threads: Interpreter threads. Defaults to 1.
        delegate: Apply LiteRT's default XNNPACK delegate, falling back to
            the builtin kernels with a warning when XNNPACK cannot prepare
            the model (`self.delegated` says which ran). Defaults to True.
    """

    def __init__(self, tflite, num_threads=1, delegate=True):
        self.delegated = delegate
        try:
            self._interpreter = _interpreter(tflite, delegate, num_threads)
        except RuntimeError as e:
            if not delegate:
                raise
            warnings.warn(
                f"XNNPACK failed to prepare this model ({e}); running it on "
                "TFLite's builtin kernels instead. See "
                "`xnnpack_scale_violations` and float_layers=['auto'].",
                stacklevel=2,
            )
            self.delegated = False
            self._interpreter = _interpreter(tflite, False, num_threads)
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                "Expected a model with one input and one output. "
                f"Received: {len(inputs)} inputs, {len(outputs)} outputs"
            )
        self.input_detail = inputs[0]
        self.output_detail = outputs[0]

    @property
    def image_size(self):
        return tuple(int(s) for s in self.input_detail["shape"][1:3])

    def __call__(self, images):
        """Returns float32 outputs `[n, classes]` for images `[n, h, w, 3]`."""
        images = _check_images(images, self.image_size, "images")
        outputs = []
        for image in images:
            x = _quantize_input(image[np.newaxis], self.input_detail)
            self._interpreter.set_tensor(self.input_detail["index"], x)
            self._interpreter.invoke()
            y = self._interpreter.get_tensor(self.output_detail["index"])
            outputs.append(_dequantize_output(y, self.output_detail))
        return np.concatenate(outputs)


def outputs_softmax(tflite):
    """Whether the model's output is computed by a SOFTMAX op.

    Looks through DEQUANTIZE/QUANTIZE/RESHAPE at the output.

    Args:
        tflite: `.tflite` bytes or path.

    Returns:
        True when the output holds probabilities, False for logits.
    """
    model = _flatbuffer(_model_bytes(tflite))
    subgraph = model.subgraphs[0]
    producer = {t: op for op in subgraph.operators for t in op.outputs}
    tensor = subgraph.outputs[0]
    while tensor in producer:
        op = producer[tensor]
        name = _op_name(model, op.opcodeIndex)
        if name not in _PASS_THROUGH_OPS:
            return name == "SOFTMAX"
        tensor = op.inputs[0]
    return False


def compare_outputs(reference, outputs, labels=None):
    """Compares TFLite outputs with Keras outputs of the same images.

    Args:
        reference: Keras outputs `[n, classes]`.
        outputs: TFLite outputs `[n, classes]`.
        labels: Optional int labels `[n]` for top-1 accuracy.

    Returns:
        A dict: `num_examples`, `top1_agreement` (fraction with the same
        argmax), `max_abs_diff`, `max_rel_diff` (max|a - b| / max|a| over
        all examples, a = Keras), and with labels `keras_top1` and
        `tflite_top1` accuracies.
    """
    reference = np.asarray(reference, np.float32)
    outputs = np.asarray(outputs, np.float32)
    if reference.shape != outputs.shape:
        raise ValueError(
            f"Output shapes differ: Keras {reference.shape}, TFLite "
            f"{outputs.shape}"
        )
    diff = float(np.max(np.abs(reference - outputs)))
    result = {
        "num_examples": int(len(reference)),
        "top1_agreement": float(
            np.mean(reference.argmax(-1) == outputs.argmax(-1))
        ),
        "max_abs_diff": diff,
        "max_rel_diff": diff / max(float(np.max(np.abs(reference))), 1e-30),
    }
    if labels is not None:
        labels = np.asarray(labels)
        result["keras_top1"] = float(np.mean(reference.argmax(-1) == labels))
        result["tflite_top1"] = float(np.mean(outputs.argmax(-1) == labels))
    return result


def evaluate_tflite(
    tflite,
    dataset,
    keras_model=None,
    *,
    max_examples=None,
    num_threads=1,
    progress=None,
):
    """Runs a `.tflite` over an evaluation dataset, optionally vs Keras.

    The Keras model is compared at the same output as the TFLite model:
    logits when the `.tflite` has no final softmax (see `logits_model`),
    probabilities otherwise.

    Reference:
        Zhang et al., ShuffleNet, section 4 (single-crop top-1).

    Args:
        tflite: `.tflite` bytes or path.
        dataset: Batches `(images, labels)` or `(images, labels,
            sample_weight)` as `keras_shufflenet.data` gives for
            evaluation; rows with weight 0 (padding) are skipped.
        keras_model: The source Keras model. Defaults to None (TFLite
            top-1 only).
        max_examples: Stop after this many examples. Defaults to all.
        num_threads: Interpreter threads. Defaults to 1.
        progress: Optional callable `progress(done)` called per batch.

    Returns:
        A dict with `tflite_top1` and `num_examples`, plus
        `compare_outputs`' fields when `keras_model` is given.
    """
    runner = TFLiteModel(tflite, num_threads=num_threads)
    reference_model = None
    if keras_model is not None:
        reference_model = keras_model
        if not outputs_softmax(tflite):
            reference_model = logits_model(keras_model)
    tflite_out, keras_out, labels = [], [], []
    done = 0
    for batch in dataset:
        images, batch_labels = np.asarray(batch[0]), np.asarray(batch[1])
        if len(batch) > 2:
            keep = np.asarray(batch[2]) > 0
            images, batch_labels = images[keep], batch_labels[keep]
        if max_examples is not None:
            images = images[: max_examples - done]
            batch_labels = batch_labels[: max_examples - done]
        if len(images) == 0:
            break
        tflite_out.append(runner(images))
        if reference_model is not None:
            keras_out.append(
                np.asarray(reference_model(images.astype(np.float32),
                                           training=False))
            )
        labels.append(batch_labels)
        done += len(images)
        if progress is not None:
            progress(done)
        if max_examples is not None and done >= max_examples:
            break
    if not done:
        raise ValueError("`dataset` yielded no examples.")
    outputs = np.concatenate(tflite_out)
    labels = np.concatenate(labels)
    if reference_model is None:
        return {
            "num_examples": done,
            "tflite_top1": float(np.mean(outputs.argmax(-1) == labels)),
        }
    return compare_outputs(np.concatenate(keras_out), outputs, labels)


# Named conversions compared by `compare_conversions`: the modes and the
# known post-training-quantization fixes and alternatives.
CONVERSION_VARIANTS = {
    "float32": {"mode": "float32"},
    "float16": {"mode": "float16"},
    "dynamic": {"mode": "dynamic"},
    "int8": {"mode": "int8", "input_type": "int8"},
    "int8_uint8_in": {"mode": "int8", "input_type": "uint8"},
    "int8_per_tensor": {
        "mode": "int8", "input_type": "int8", "per_channel": False,
    },
    "int8_float_first_last": {
        "mode": "int8", "float_layers": ["first", "last"],
    },
    "int8_float_auto": {"mode": "int8", "float_layers": ["auto"]},
    "int16x8": {"mode": "int16x8"},
    "ai_edge_quantizer_int8": {"quantizer": "ai_edge_quantizer"},
}


def _collect(dataset, max_examples):
    images, labels = [], []
    count = 0
    for batch in dataset:
        x, y = np.asarray(batch[0]), np.asarray(batch[1])
        if len(batch) > 2:
            keep = np.asarray(batch[2]) > 0
            x, y = x[keep], y[keep]
        images.append(x)
        labels.append(y)
        count += len(x)
        if max_examples is not None and count >= max_examples:
            break
    if not count:
        raise ValueError("`dataset` yielded no examples.")
    images = np.concatenate(images)[:max_examples]
    return images, np.concatenate(labels)[:max_examples]


def compare_conversions(
    model,
    dataset,
    *,
    calibration_data=None,
    variants=None,
    image_size=None,
    max_examples=None,
    num_threads=1,
    progress=None,
):
    """Converts `model` several ways and measures each against Keras.

    All variants output logits (the softmax is dropped) and are compared
    with the Keras logits on the same images: top-1 of each, their top-1
    agreement, the largest relative logit difference, size and XNNPACK
    pieces.

    Reference:
        Zhang et al., ShuffleNet, section 4 (single-crop top-1).

    Args:
        model: The Keras model.
        dataset: Evaluation batches `(images, labels[, sample_weight])`.
        calibration_data: Images for the int8 variants (see
            `calibration_images`).
        variants: Names from `CONVERSION_VARIANTS`. Defaults to all.
        image_size: Export side. Defaults to the model's input size.
        max_examples: Evaluate at most this many examples. Defaults to
            all.
        num_threads: Interpreter threads. Defaults to 1.
        progress: Optional callable `progress(message)`.

    Returns:
        A list of dicts, one per variant: `variant`, `size_bytes`,
        `compare_outputs` fields, `xnnpack_pieces` and `ops_left_out`.
    """
    variants = list(variants or CONVERSION_VARIANTS)
    for name in variants:
        _check_choice(name, tuple(CONVERSION_VARIANTS), "variants")
    progress = progress or (lambda message: None)
    logits = logits_model(model)
    images, labels = _collect(dataset, max_examples)
    progress(f"Keras logits of {len(images)} images")
    reference = np.concatenate(
        [
            np.asarray(logits(images[i : i + 32].astype(np.float32),
                              training=False))
            for i in range(0, len(images), 32)
        ]
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        saved_models = {}  # One per set of deployment rewrites.

        def saved_model(mode):
            rewrites = deploy.rewrites_for(mode)
            if rewrites not in saved_models:
                path = os.path.join(tmp, f"saved_model_{len(saved_models)}")
                export_saved_model(logits, path, image_size, mode)
                saved_models[rewrites] = path
            return saved_models[rewrites]

        for name in variants:
            kwargs = dict(CONVERSION_VARIANTS[name])
            progress(f"Converting {name}")
            if kwargs.pop("quantizer", None) == "ai_edge_quantizer":
                # The quantizer takes a float model: the integer graph's.
                float32 = convert_saved_model(saved_model("int8"))
                tflite = quantize_with_ai_edge_quantizer(
                    float32, calibration_data
                )
            else:
                if kwargs["mode"] in ("int8", "int16x8"):
                    kwargs["calibration_data"] = calibration_data
                tflite = convert_saved_model(
                    saved_model(kwargs["mode"]), **kwargs
                )
            progress(f"Evaluating {name}")
            outputs = TFLiteModel(tflite, num_threads=num_threads)(images)
            coverage = xnnpack_coverage(tflite)
            rows.append(
                {
                    "variant": name,
                    "size_bytes": len(tflite),
                    **compare_outputs(reference, outputs, labels),
                    "xnnpack_pieces": coverage["pieces"],
                    "ops_left_out": coverage["ops_left_out"],
                }
            )
    return rows


def format_conversion_table(rows):
    """Renders `compare_conversions` rows as a plain-text table.

    Args:
        rows: A list of dicts from `compare_conversions`.

    Returns:
        A multi-line string.
    """
    header = (
        f"{'variant':<24}{'KiB':>8}{'top-1':>8}{'Keras':>8}{'agree':>8}"
        f"{'max rel':>10}{'pieces':>8}  left out"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        left = ", ".join(f"{k} x{v}" for k, v in r["ops_left_out"].items())
        lines.append(
            f"{r['variant']:<24}{r['size_bytes'] / 1024:>8.1f}"
            f"{100 * r['tflite_top1']:>7.2f}%{100 * r['keras_top1']:>7.2f}%"
            f"{100 * r['top1_agreement']:>7.2f}%{r['max_rel_diff']:>10.2e}"
            f"{str(r['xnnpack_pieces']):>8}  {left or '-'}"
        )
    return "\n".join(lines)


def plot_conversions(rows, path, title=""):
    """Saves a PNG: top-1 agreement, logit error and size per variant.

    Args:
        rows: A list of dicts from `compare_conversions`.
        path: The PNG to write.
        title: Figure title. Defaults to "".
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(rows) + 1.5),
                             sharey=True)
    panels = (
        ("top-1 agreement with Keras (%)",
         [100 * r["top1_agreement"] for r in rows]),
        ("max relative logit difference",
         [max(r["max_rel_diff"], 1e-9) for r in rows]),
        ("size (KiB)", [r["size_bytes"] / 1024 for r in rows]),
    )
    for ax, (label, values) in zip(axes, panels):
        ax.barh(names, values, color="tab:blue")
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[1].set_xscale("log")
    axes[0].invert_yaxis()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def format_evaluation(results):
    """Renders `evaluate_tflite` results as plain text.

    Args:
        results: A dict from `evaluate_tflite`.

    Returns:
        A multi-line string.
    """
    lines = [f"  examples         {results['num_examples']}"]
    lines.append(f"  TFLite top-1     {100 * results['tflite_top1']:.2f}%")
    if "keras_top1" in results:
        lines += [
            f"  Keras top-1      {100 * results['keras_top1']:.2f}%",
            f"  top-1 agreement  {100 * results['top1_agreement']:.2f}%",
            f"  max |diff|       {results['max_abs_diff']:.3g}",
            f"  max rel. diff    {results['max_rel_diff']:.3g}",
        ]
    return "\n".join(lines)


def write_report(report, path):
    """Writes a report dict as JSON, atomically.

    Args:
        report: A JSON-serialisable dict, e.g. from `model_report`.
        path: Destination file.
    """
    import json

    write_atomic(path, (json.dumps(report, indent=2) + "\n").encode())
