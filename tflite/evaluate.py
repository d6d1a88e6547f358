"""Evaluates .tflite ShuffleNets with LiteRT and compares them with Keras.

    # One converted model against its Keras source:
    python tflite/evaluate.py --tflite=/tmp/m_int8.tflite \
        --model=runs/quickstart_digits/export/m.keras --data.source=digits
    # Convert a Keras model every way (float32, float16, dynamic, int8
    # variants, AI Edge Quantizer) and tabulate them, with a PNG:
    python tflite/evaluate.py --model=... --data.source=digits \
        --variants=all --output_json=/tmp/modes.json --plot=/tmp/modes.png

Prints TFLite top-1, Keras top-1, their top-1 agreement and the largest
output difference (absolute, and relative: max|a - b| / max|a| with a the
Keras output; logits when the .tflite has no final softmax). Images go
through the evaluation pipeline of keras_shufflenet.data (centre crop);
int8 variants calibrate on training images through the same pipeline.
"""

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

# Runnable from a source checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_shufflenet import data  # noqa: E402
from keras_shufflenet import lite  # noqa: E402
from keras_shufflenet.lite import evaluation  # noqa: E402
from keras_shufflenet.lite import model_flags  # noqa: E402
from keras_shufflenet.lite import saved_model  # noqa: E402
from keras_shufflenet.utils.cli import exit_on_errors  # noqa: E402
from keras_shufflenet.utils.cli import run_on_tensorflow  # noqa: E402

run_on_tensorflow(os.path.basename(__file__))

_TFLITE = flags.DEFINE_string("tflite", None, "The .tflite to evaluate.")
_VARIANTS = flags.DEFINE_list(
    "variants", [],
    "Instead of --tflite: convert the Keras model in these ways and compare "
    f"them; 'all' or names from {sorted(evaluation.CONVERSION_VARIANTS)}.",
)
_CALIBRATION_SPLIT = flags.DEFINE_enum(
    "calibration_split", "train", ["train", "eval"],
    "--variants: split whose centre crops calibrate int8.",
)
_NUM_CALIBRATION_IMAGES = flags.DEFINE_integer(
    "num_calibration_images", saved_model.DEFAULT_NUM_CALIBRATION_IMAGES,
    "--variants: images used to calibrate int8.",
)
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None,
    "--variants: input side. Defaults to the model's, or 224.",
)
_PLOT = flags.DEFINE_string("plot", None, "--variants: write a PNG here.")
model_flags.define_model_flags("to compare with (--variants)", scale=None)
data.define_input_flags("Evaluation data source.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 50, "Keras batch size.")
_MAX_EXAMPLES = flags.DEFINE_integer(
    "max_examples", None, "Evaluate only this many examples."
)
_NUM_THREADS = flags.DEFINE_integer("num_threads", 1, "LiteRT threads.")
_OUTPUT_JSON = flags.DEFINE_string(
    "output_json", None, "Write the results here as JSON."
)


def _input_config(image_size):
    config = data.input_config_from_flags(image_size)
    if config.source is None:
        raise app.UsageError("--data.source is required (and its data flags).")
    return config


def _progress(message):
    print(message, flush=True)


def _compare_variants():
    keras_model = model_flags.model_from_flags(_IMAGE_SIZE.value or 224)
    if keras_model is None:
        raise app.UsageError("--variants needs --model, or --scale/--weights.")
    (size, _) = saved_model.input_size(keras_model, _IMAGE_SIZE.value)
    variants = _VARIANTS.value
    if variants == ["all"]:
        variants = list(evaluation.CONVERSION_VARIANTS)
    config = _input_config(size)
    calibration = None
    unknown = sorted(set(variants) - set(evaluation.CONVERSION_VARIANTS))
    if unknown:
        raise app.UsageError(
            f"Unknown --variants {unknown}; choose from "
            f"{sorted(evaluation.CONVERSION_VARIANTS)} or 'all'."
        )
    # The AI Edge Quantizer variant has no converter mode: it is int8.
    if any(evaluation.CONVERSION_VARIANTS[v].get("mode", "int8") == "int8"
           for v in variants):
        calibration = lite.calibration_images(
            config, _NUM_CALIBRATION_IMAGES.value, _CALIBRATION_SPLIT.value
        )
        _progress(f"Calibrating int8 on {len(calibration)} "
                  f"{_CALIBRATION_SPLIT.value} images.")
    pipeline = data.InputPipeline(config)
    rows = evaluation.compare_conversions(
        keras_model,
        pipeline.dataset(False, _BATCH_SIZE.value),
        calibration_data=calibration,
        variants=variants,
        image_size=size,
        max_examples=_MAX_EXAMPLES.value,
        num_threads=_NUM_THREADS.value,
        progress=_progress,
    )
    result = {
        "model": keras_model.name,
        "image_size": size,
        "num_calibration_images": (
            None if calibration is None else len(calibration)
        ),
        "calibration_split": _CALIBRATION_SPLIT.value,
        "variants": rows,
    }
    if _OUTPUT_JSON.value:
        evaluation.write_report(result, _OUTPUT_JSON.value)
    if _PLOT.value:
        evaluation.plot_conversions(rows, _PLOT.value, keras_model.name)
    print(evaluation.format_conversion_table(rows))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TF's export chatter.
    if bool(_TFLITE.value) == bool(_VARIANTS.value):
        raise app.UsageError("Give exactly one of --tflite and --variants.")
    if _VARIANTS.value:
        return _compare_variants()
    runner = lite.TFLiteModel(_TFLITE.value)
    height, width = runner.image_size
    if height != width:
        raise app.UsageError(f"Square inputs only. Received: {height}x{width}")
    config = _input_config(height)
    pipeline = data.InputPipeline(config)
    total = pipeline.num_examples(False)
    if _MAX_EXAMPLES.value:
        total = min(total, _MAX_EXAMPLES.value)
    keras_model = model_flags.model_from_flags(height)
    start = time.perf_counter()

    def progress(done):
        _progress(
            f"{done}/{total} examples ({time.perf_counter() - start:.0f} s)"
        )

    results = lite.evaluate_tflite(
        _TFLITE.value,
        pipeline.dataset(False, _BATCH_SIZE.value),
        keras_model,
        max_examples=_MAX_EXAMPLES.value,
        num_threads=_NUM_THREADS.value,
        progress=progress,
    )
    results = {"tflite": _TFLITE.value, **results}
    if _OUTPUT_JSON.value:
        evaluation.write_report(results, _OUTPUT_JSON.value)
    print(evaluation.format_evaluation(results))


if __name__ == "__main__":
    app.run(exit_on_errors(main))
