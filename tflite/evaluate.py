"""Evaluates a .tflite ShuffleNet with LiteRT and compares it with Keras.

    python tflite/evaluate.py --tflite=/tmp/m_int8.tflite \
        --model=runs/quickstart_digits/export/m.keras --data_source=digits

Prints TFLite top-1, Keras top-1, their top-1 agreement and the largest
output difference (absolute, and relative: max|a - b| / max|a| with a the
Keras output; logits when the .tflite has no final softmax). Images go
through the evaluation pipeline of keras_shufflenet.data (centre crop).
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
from keras_shufflenet import export  # noqa: E402

_TFLITE = flags.DEFINE_string("tflite", None, "The .tflite to evaluate.")
_MODEL = flags.DEFINE_string(
    "model", None, "The source .keras model, to compare with."
)
_WEIGHTS = flags.DEFINE_string(
    "weights", None,
    "Weights for a ShuffleNet built from --scale, --groups, ... to compare "
    "with, instead of --model.",
)
_SCALE = flags.DEFINE_float("scale", None, "ShuffleNet width multiplier.")
_GROUPS = flags.DEFINE_integer("groups", 3, "Pointwise conv groups.")
_SE = flags.DEFINE_bool("se", False, "Squeeze-and-excitation units.")
_SHALLOW = flags.DEFINE_bool("shallow", False, "Half-depth stages.")
_CLASSES = flags.DEFINE_integer("classes", 1000, "Classifier classes.")
_SHUFFLE_ORDER = flags.DEFINE_enum(
    "shuffle_order", "paper", ["paper", "official"], "Channel shuffle order."
)
_DATA_SOURCE = flags.DEFINE_enum(
    "data_source", None, data.SOURCES, "Evaluation data source."
)
_DATA_NAME = flags.DEFINE_string("data_name", None, "TFDS dataset name.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_EVAL_SPLIT = flags.DEFINE_string("eval_split", "validation", "TFDS split.")
_EVAL_PATH = flags.DEFINE_string(
    "eval_path", None, "Folder of class folders, or TFRecord files."
)
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", None, "Classes of a TFRecord source."
)
_LABEL_OFFSET = flags.DEFINE_integer(
    "label_offset", data.IMAGENET_TFRECORD_LABEL_OFFSET,
    "Subtracted from TFRecord labels.",
)
_CROP_FRACTION = flags.DEFINE_float(
    "crop_fraction", data.DEFAULT_CROP_FRACTION,
    "Centre crop side over the shorter image side.",
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 50, "Keras batch size.")
_MAX_EXAMPLES = flags.DEFINE_integer(
    "max_examples", None, "Evaluate only this many examples."
)
_NUM_THREADS = flags.DEFINE_integer("num_threads", 1, "LiteRT threads.")
_OUTPUT_JSON = flags.DEFINE_string(
    "output_json", None, "Write the results here as JSON."
)
flags.mark_flags_as_required(["tflite", "data_source"])


def _keras_model(image_size):
    if _MODEL.value:
        return export.load_model(_MODEL.value)
    if _SCALE.value is None and _WEIGHTS.value is None:
        return None
    return export.load_model(
        weights=_WEIGHTS.value,
        image_size=image_size,
        scale=_SCALE.value or 1.0,
        groups=_GROUPS.value,
        se=_SE.value,
        shallow=_SHALLOW.value,
        classes=_CLASSES.value,
        shuffle_order=_SHUFFLE_ORDER.value,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    runner = export.TFLiteModel(_TFLITE.value)
    height, width = runner.image_size
    if height != width:
        raise app.UsageError(f"Square inputs only. Received: {height}x{width}")
    config = data.InputConfig(
        source=_DATA_SOURCE.value,
        name=_DATA_NAME.value,
        data_dir=_DATA_DIR.value,
        eval_split=_EVAL_SPLIT.value,
        eval_path=_EVAL_PATH.value,
        num_classes=_NUM_CLASSES.value,
        label_offset=_LABEL_OFFSET.value,
        image_size=height,
        crop_fraction=_CROP_FRACTION.value,
    )
    pipeline = data.InputPipeline(config)
    total = pipeline.num_examples(False)
    if _MAX_EXAMPLES.value:
        total = min(total, _MAX_EXAMPLES.value)
    keras_model = _keras_model(height)
    start = time.perf_counter()

    def progress(done):
        logging.info(
            "%d/%d examples (%.0f s)", done, total,
            time.perf_counter() - start,
        )

    results = export.evaluate_tflite(
        _TFLITE.value,
        pipeline.dataset(False, _BATCH_SIZE.value),
        keras_model,
        max_examples=_MAX_EXAMPLES.value,
        num_threads=_NUM_THREADS.value,
        progress=progress,
    )
    results = {"tflite": _TFLITE.value, **results}
    if _OUTPUT_JSON.value:
        export.write_report(results, _OUTPUT_JSON.value)
    print(export.format_evaluation(results))


if __name__ == "__main__":
    app.run(main)
