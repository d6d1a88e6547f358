"""TFLite (LiteRT) conversion of ShuffleNet: float32, float16, dynamic
range, int8 and int16x8 post-training quantization, builtin ops only.
"""

import copy
import functools
import os
import tempfile
import warnings

import numpy as np
import tensorflow as tf

from keras_shufflenet.lite.inspection import check_builtin_ops
from keras_shufflenet.lite.inspection import make_interpreter
from keras_shufflenet.lite.inspection import model_bytes
from keras_shufflenet.lite.inspection import xnnpack_scale_violations
from keras_shufflenet.lite.saved_model import DEFAULT_NUM_CALIBRATION_IMAGES
from keras_shufflenet.lite.saved_model import SIGNATURE_KEY
from keras_shufflenet.lite.saved_model import export_saved_model
from keras_shufflenet.lite.saved_model import logits_model
from keras_shufflenet.lite.saved_model import saved_model_input_size
from keras_shufflenet.lite.tflite_converter import check_images
from keras_shufflenet.lite.tflite_converter import debug_options
from keras_shufflenet.lite.tflite_converter import make_converter
from keras_shufflenet.lite.tflite_converter import quantization_debugger
from keras_shufflenet.lite.tflite_converter import run_converter
from keras_shufflenet.lite.tflite_converter import write_layer_csv
from keras_shufflenet.utils.checks import check_choice
from keras_shufflenet.utils.files import write_atomic

MODES = ("float32", "float16", "dynamic", "int8", "int16x8")
INPUT_TYPES = ("float32", "int8", "uint8")
OUTPUT_TYPES = ("float32", "int8")


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
    what=None,
):
    """Converts a batch-1 SavedModel to a builtin-ops-only TFLite model.

    See `convert` for the arguments; this is its second half, for callers
    converting one SavedModel (from `export_saved_model`) several ways.

    Reference:
        Zhang et al., ShuffleNet, section 4 (the evaluated network).

    Args:
        what: How errors and warnings name the model. Defaults to
            "SavedModel <saved_model_dir>".

    Returns:
        The `.tflite` flatbuffer as bytes.
    """
    what = what or f"SavedModel {os.fspath(saved_model_dir)}"
    float_layers = _check_options(
        mode, input_type, output_type, float_layers, debug_csv
    )
    saved_model_dir = os.fspath(saved_model_dir)
    if not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
        raise FileNotFoundError(
            f"No SavedModel (saved_model.pb) in {saved_model_dir}"
        )
    images = _calibration_images(
        saved_model_dir, mode, calibration_data, num_calibration_images
    )
    # A converter converts once (the debugger re-targets its own).
    new_converter = functools.partial(
        make_converter, saved_model_dir, mode, images, input_type,
        output_type, per_channel,
    )
    if debug_csv:
        debugger = quantization_debugger(
            new_converter(),
            images,
            debug_options(saved_model_dir, float_layers, what),
            what,
        )
        write_layer_csv(debugger, debug_csv)
    tflite = None
    if "auto" in float_layers:
        plain = run_converter(new_converter().convert, what)
        auto = [
            v["layer"] for v in xnnpack_scale_violations(plain) if v["layer"]
        ]
        float_layers = [n for n in float_layers if n != "auto"] + auto
        if not float_layers:
            tflite = plain
    if tflite is None and not float_layers:
        tflite = run_converter(new_converter().convert, what)
    elif tflite is None:
        converter = new_converter()
        # Float islands need the float kernels next to the int8 ones.
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
        debugger = quantization_debugger(
            converter,
            images,
            debug_options(saved_model_dir, float_layers, what),
            what,
        )
        tflite = run_converter(debugger.get_nondebug_quantized_model, what)
    if mode == "int8":
        _warn_if_xnnpack_refuses(tflite, what)
    check_builtin_ops(tflite)
    if output_path is not None:
        write_atomic(output_path, tflite)
    return tflite


def _check_options(mode, input_type, output_type, float_layers, debug_csv):
    """Checks the conversion options together; returns `float_layers` as a
    list."""
    check_choice("mode", mode, MODES)
    check_choice("input_type", input_type, INPUT_TYPES)
    check_choice("output_type", output_type, OUTPUT_TYPES)
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
    return float_layers


def _calibration_images(
    saved_model_dir, mode, calibration_data, num_calibration_images
):
    """The checked calibration images of a quantized mode, else None."""
    if mode not in ("int8", "int16x8"):
        return None
    if calibration_data is None:
        raise ValueError(
            f"mode={mode!r} needs `calibration_data`: evaluation-style "
            "images, e.g. from `calibration_images(config)`."
        )
    size = saved_model_input_size(saved_model_dir)
    images = check_images(calibration_data, size, "calibration_data")
    if not isinstance(num_calibration_images, int) or (
        num_calibration_images < 1
    ):
        raise ValueError(
            "`num_calibration_images` must be a positive int. Received: "
            f"num_calibration_images={num_calibration_images!r}"
        )
    return images[:num_calibration_images]


def _warn_if_xnnpack_refuses(tflite, what):
    violations = xnnpack_scale_violations(tflite)
    if violations:
        layers = sorted({str(v["layer"]) for v in violations})
        warnings.warn(
            f"{what}: XNNPACK cannot prepare this int8 model: layers "
            f"{layers} have a requantization scale >= 256 (near-zero "
            "batch-norm variance folded into the weights). LiteRT's "
            "default CPU setup will fail to load it; convert with "
            "float_layers=['auto'] to keep those layers in float.",
            stacklevel=4,
        )


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

    The route is `deployment_model(model)` (for a `ShuffleNet`, the
    model's own graph: `model.export(path, format="litert")` gives the
    same ops) -> SavedModel with a fixed `(1, height, width, 3)` float32
    signature ->
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
        export_saved_model(model, saved_model_dir, image_size)
        return convert_saved_model(
            saved_model_dir,
            output_path,
            what=f"Model {model.name!r}",
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
    per_tensor_ops=(),
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
        per_tensor_ops: TFLite op names (e.g. "DEPTHWISE_CONV_2D") whose
            weights get one scale per tensor instead of the recipe's
            granularity, for targets that need it. Defaults to none.

    Returns:
        The quantized `.tflite` flatbuffer as bytes.
    """
    # An optional extra (keras_shufflenet[quantizer]), needed only here.
    from ai_edge_quantizer import quantizer as aeq_quantizer
    from ai_edge_quantizer import recipe as aeq_recipe

    float_tflite = model_bytes(float_tflite, "float_tflite")
    recipe_fn = getattr(aeq_recipe, recipe, None)
    if recipe_fn is None or recipe.startswith("_"):
        raise ValueError(
            "`recipe` must name a function of ai_edge_quantizer.recipe, "
            f"e.g. 'static_wi8_ai8'. Received: recipe={recipe!r}"
        )
    interpreter = make_interpreter(float_tflite, delegate=False)
    (detail,) = interpreter.get_input_details()
    size = tuple(int(d) for d in detail["shape"][1:3])
    images = check_images(calibration_data, size, "calibration_data")
    images = images[:num_calibration_images]
    (input_name,) = interpreter.get_signature_list()[SIGNATURE_KEY]["inputs"]
    entries = recipe_fn()
    for op in per_tensor_ops:
        # A later entry overrides an earlier one for the ops it matches.
        entry = copy.deepcopy(entries[-1])
        entry["operation"] = op
        entry["op_config"]["weight_tensor_config"]["granularity"] = (
            "TENSORWISE"
        )
        entries.append(entry)
    quantizer = aeq_quantizer.Quantizer(float_tflite, entries)
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
