"""Converts a ShuffleNet to a batch-1, builtin-ops-only TFLite model.

    # float32 from a trained .keras model (fixed 48x48 input of the model):
    python tflite/convert.py --model=runs/quickstart_digits/export/m.keras \
        --output=/tmp/m_f32.tflite
    # full-integer int8, int8 camera-frame input, calibrated on 300 centre
    # crops of the evaluation split:
    python tflite/convert.py --model=... --output=/tmp/m_int8.tflite \
        --mode=int8 --input_type=int8 --data.source=digits
    # ShuffleNet 1x g3 from arguments (random weights or --weights=...):
    python tflite/convert.py --scale=1 --groups=3 --image_size=224 \
        --output=/tmp/s1.tflite --mode=float16

A JSON report (size, op counts, XNNPACK coverage, tensor ranks) is written
next to the model and printed as a table.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

# Runnable from a source checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_shufflenet import data  # noqa: E402
from keras_shufflenet import lite  # noqa: E402
from keras_shufflenet.lite import conversion  # noqa: E402
from keras_shufflenet.lite import evaluation  # noqa: E402
from keras_shufflenet.lite import model_flags  # noqa: E402
from keras_shufflenet.lite import saved_model  # noqa: E402
from keras_shufflenet.utils.cli import exit_on_errors  # noqa: E402
from keras_shufflenet.utils.cli import run_on_tensorflow  # noqa: E402

run_on_tensorflow(os.path.basename(__file__))

model_flags.define_model_flags("to convert")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None,
    "Input side. Defaults to the model's fixed input size, or 224.",
)
_OUTPUT = flags.DEFINE_string("output", None, "The .tflite to write.")
_MODE = flags.DEFINE_enum("mode", "float32", lite.MODES, "Conversion mode.")
_INPUT_TYPE = flags.DEFINE_enum(
    "input_type", "float32", conversion.INPUT_TYPES,
    "int8 mode: input tensor type (int8/uint8 take pixel frames directly).",
)
_OUTPUT_TYPE = flags.DEFINE_enum(
    "output_type", "float32", conversion.OUTPUT_TYPES,
    "int8 mode: output tensor type.",
)
_QUANTIZER = flags.DEFINE_enum(
    "quantizer", "converter", ["converter", "ai_edge_quantizer"],
    "int8 mode: the TFLite converter's quantization, or the LiteRT AI Edge "
    "Quantizer (static_wi8_ai8 on the float32 model; int8 I/O).",
)
_PER_CHANNEL = flags.DEFINE_bool(
    "per_channel", True, "int8 mode: per-channel weight scales."
)
_FLOAT_LAYERS = flags.DEFINE_list(
    "float_layers", [],
    "int8 mode: keep these in float: 'first' (preprocessing and stem "
    "conv), 'last' (classifier), 'auto' (layers XNNPACK cannot run in "
    "int8) or Keras layer names.",
)
_DEBUG_CSV = flags.DEFINE_string(
    "debug_csv", None,
    "int8 mode: write per-layer quantization error (RMSE, scale, "
    "RMSE/scale) from the QuantizationDebugger to this CSV.",
)
_LOGITS = flags.DEFINE_bool(
    "logits", False, "Drop the final softmax; the model outputs logits."
)
_NUM_CALIBRATION_IMAGES = flags.DEFINE_integer(
    "num_calibration_images", saved_model.DEFAULT_NUM_CALIBRATION_IMAGES,
    "int8/int16x8 modes: images used to calibrate.",
)
data.define_input_flags("int8/int16x8 modes: calibration data source.")
_CALIBRATION_SPLIT = flags.DEFINE_enum(
    "calibration_split", "train", ["train", "eval"],
    "int8 mode: split whose centre crops (evaluation preprocessing) "
    "calibrate.",
)
_REPORT = flags.DEFINE_string(
    "report", None, "Report JSON path. Defaults to <output>.json."
)
flags.mark_flag_as_required("output")


def _calibration_images(image_size):
    config = data.input_config_from_flags(image_size)
    if config.source is None:
        raise app.UsageError(
            f"--mode={_MODE.value} needs --data.source (and its data "
            "flags) to calibrate."
        )
    images = lite.calibration_images(
        config, _NUM_CALIBRATION_IMAGES.value, _CALIBRATION_SPLIT.value
    )
    print(f"Calibrating on {len(images)} centre-cropped "
          f"{_CALIBRATION_SPLIT.value} images.", flush=True)
    return images


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TF's export chatter.
    model = model_flags.model_from_flags(_IMAGE_SIZE.value or 224)
    size = saved_model.input_size(model, _IMAGE_SIZE.value)
    if size[0] != size[1]:
        raise app.UsageError(f"Square inputs only. Received: {size}")
    quantized = _MODE.value in ("int8", "int16x8")
    images = _calibration_images(size[0]) if quantized else None
    settings = {
        "mode": _MODE.value,
        "image_size": size[0],
        "logits": _LOGITS.value,
    }
    if _MODE.value == "int8" and _QUANTIZER.value == "ai_edge_quantizer":
        # The quantizer takes the float model and quantizes it itself.
        float_model = lite.convert(
            model,
            mode="float32",
            image_size=size,
            logits=_LOGITS.value,
        )
        tflite = lite.quantize_with_ai_edge_quantizer(
            float_model,
            images,
            _OUTPUT.value,
            num_calibration_images=_NUM_CALIBRATION_IMAGES.value,
        )
        settings.update(quantizer="ai_edge_quantizer:static_wi8_ai8")
    else:
        tflite = lite.convert(
            model,
            _OUTPUT.value,
            mode=_MODE.value,
            image_size=size,
            calibration_data=images,
            num_calibration_images=_NUM_CALIBRATION_IMAGES.value,
            input_type=_INPUT_TYPE.value,
            output_type=_OUTPUT_TYPE.value,
            per_channel=_PER_CHANNEL.value,
            float_layers=_FLOAT_LAYERS.value,
            debug_csv=_DEBUG_CSV.value,
            logits=_LOGITS.value,
        )
        if _MODE.value == "int8":
            settings.update(
                quantizer="converter",
                input_type=_INPUT_TYPE.value,
                output_type=_OUTPUT_TYPE.value,
                per_channel=_PER_CHANNEL.value,
                float_layers=_FLOAT_LAYERS.value,
            )
    if quantized:
        settings["num_calibration_images"] = len(images)
    report = lite.model_report(tflite)
    report = {"model": model.name, "tflite": _OUTPUT.value,
              "settings": settings, **report}
    report_path = _REPORT.value or _OUTPUT.value + ".json"
    evaluation.write_report(report, report_path)
    print(lite.format_report(report, f"{_OUTPUT.value} ({model.name})"))
    print(f"Report: {report_path}")
    if _DEBUG_CSV.value:
        print(f"Per-layer quantization error: {_DEBUG_CSV.value}")


if __name__ == "__main__":
    app.run(exit_on_errors(main))
