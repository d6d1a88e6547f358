"""The deployment stage: the on-device graph, TFLite (LiteRT) conversion
(float32, float16, dynamic range, int8, int16x8), its inspection and
evaluation, and the latency benchmark of Table 8 (`benchmark`).
Imports `models`, `data` and `utils`.

A user of this stage calls:

- `convert(model, path, mode=...)`, the conversion with a numerics check
  and a report, and `MODES`; `calibration_images(config)`, evaluation-
  style images that calibrate int8; `export_saved_model` and
  `convert_saved_model`, its two halves; `quantize_with_ai_edge_quantizer`,
  the LiteRT quantizer's int8;
- `export_litert` and `convert_with_tflite_converter`, the two standard
  routes (`model.export(format="litert")`, a SavedModel and
  `tf.lite.TFLiteConverter`), which give the same graph;
- `deployment_model`, the rewrites by name;
- `TFLiteModel`, `evaluate_tflite` and `compare_outputs`, to run and
  check a converted model; `make_interpreter`, `op_list`,
  `check_builtin_ops` (`UnsupportedOpError`), `xnnpack_coverage`,
  `model_report` and `format_report`, to inspect it;
- `load_or_build_model`, what the programs in `tflite/` convert.

The modules hold the rest (`saved_model`, `tflite_converter`,
`inspection`, `rewrite`, `standard`, ...).
"""

from keras_shufflenet.lite import benchmark
from keras_shufflenet.lite.conversion import MODES
from keras_shufflenet.lite.conversion import convert
from keras_shufflenet.lite.conversion import convert_saved_model
from keras_shufflenet.lite.conversion import quantize_with_ai_edge_quantizer
from keras_shufflenet.lite.evaluation import TFLiteModel
from keras_shufflenet.lite.evaluation import compare_outputs
from keras_shufflenet.lite.evaluation import evaluate_tflite
from keras_shufflenet.lite.inspection import UnsupportedOpError
from keras_shufflenet.lite.inspection import check_builtin_ops
from keras_shufflenet.lite.inspection import format_report
from keras_shufflenet.lite.inspection import make_interpreter
from keras_shufflenet.lite.inspection import model_report
from keras_shufflenet.lite.inspection import op_list
from keras_shufflenet.lite.inspection import xnnpack_coverage
from keras_shufflenet.lite.rewrite import deployment_model
from keras_shufflenet.lite.saved_model import calibration_images
from keras_shufflenet.lite.saved_model import export_saved_model
from keras_shufflenet.lite.saved_model import load_or_build_model
from keras_shufflenet.lite.standard import convert_with_tflite_converter
from keras_shufflenet.lite.standard import export_litert
