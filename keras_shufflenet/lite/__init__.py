"""The deployment stage: graph rewrites for on-device inference, SavedModel
export and TFLite conversion (float, float16, dynamic, int8, int16x8),
TFLite inspection and evaluation, and the latency benchmark (`lite.benchmark`).
Imports `models`, `data` and `training`'s fused graph analysis never.
"""

from keras_shufflenet.lite import benchmark
from keras_shufflenet.lite.conversion import INPUT_TYPES
from keras_shufflenet.lite.conversion import MODES
from keras_shufflenet.lite.conversion import OUTPUT_TYPES
from keras_shufflenet.lite.conversion import convert
from keras_shufflenet.lite.conversion import convert_saved_model
from keras_shufflenet.lite.conversion import quantize_with_ai_edge_quantizer
from keras_shufflenet.lite.converter import DTYPES
from keras_shufflenet.lite.converter import check_images
from keras_shufflenet.lite.converter import debug_options
from keras_shufflenet.lite.converter import float_node_names
from keras_shufflenet.lite.converter import make_converter
from keras_shufflenet.lite.converter import pin_pixel_range
from keras_shufflenet.lite.converter import quantization_debugger
from keras_shufflenet.lite.converter import representative_dataset
from keras_shufflenet.lite.converter import run_converter
from keras_shufflenet.lite.converter import write_layer_csv
from keras_shufflenet.lite.evaluation import CONVERSION_VARIANTS
from keras_shufflenet.lite.evaluation import TFLiteModel
from keras_shufflenet.lite.evaluation import compare_conversions
from keras_shufflenet.lite.evaluation import compare_outputs
from keras_shufflenet.lite.evaluation import evaluate_tflite
from keras_shufflenet.lite.evaluation import format_conversion_table
from keras_shufflenet.lite.evaluation import format_evaluation
from keras_shufflenet.lite.evaluation import output_step
from keras_shufflenet.lite.evaluation import outputs_softmax
from keras_shufflenet.lite.evaluation import plot_conversions
from keras_shufflenet.lite.evaluation import write_report
from keras_shufflenet.lite.inspection import PASS_THROUGH_OPS
from keras_shufflenet.lite.inspection import WEIGHTED_OPS
from keras_shufflenet.lite.inspection import XNNPACK_MAX_REQUANTIZATION_SCALE
from keras_shufflenet.lite.inspection import UnsupportedOpError
from keras_shufflenet.lite.inspection import check_builtin_ops
from keras_shufflenet.lite.inspection import format_report
from keras_shufflenet.lite.inspection import make_interpreter
from keras_shufflenet.lite.inspection import model_bytes
from keras_shufflenet.lite.inspection import model_report
from keras_shufflenet.lite.inspection import op_list
from keras_shufflenet.lite.inspection import op_name
from keras_shufflenet.lite.inspection import read_flatbuffer
from keras_shufflenet.lite.inspection import weight_scales
from keras_shufflenet.lite.inspection import xnnpack_coverage
from keras_shufflenet.lite.inspection import xnnpack_scale_violations
from keras_shufflenet.lite.model_flags import define_model_flags
from keras_shufflenet.lite.model_flags import model_from_flags
from keras_shufflenet.lite.rewrite import DEFAULT_REWRITES
from keras_shufflenet.lite.rewrite import GROUPWISE_MAX_GROUPS
from keras_shufflenet.lite.rewrite import GROUPWISE_MIN_CHANNELS
from keras_shufflenet.lite.rewrite import GROUPWISE_MIN_VALUES
from keras_shufflenet.lite.rewrite import REWRITES
from keras_shufflenet.lite.rewrite import GroupwiseShuffleUnit
from keras_shufflenet.lite.rewrite import deployment_model
from keras_shufflenet.lite.saved_model import DEFAULT_NUM_CALIBRATION_IMAGES
from keras_shufflenet.lite.saved_model import INPUT_NAME
from keras_shufflenet.lite.saved_model import SIGNATURE_KEY
from keras_shufflenet.lite.saved_model import calibration_images
from keras_shufflenet.lite.saved_model import export_saved_model
from keras_shufflenet.lite.saved_model import input_size
from keras_shufflenet.lite.saved_model import load_model
from keras_shufflenet.lite.saved_model import logits_model
from keras_shufflenet.lite.saved_model import saved_model_input_size
from keras_shufflenet.lite.standard import ROUTES
from keras_shufflenet.lite.standard import STANDARD_ROUTES
from keras_shufflenet.lite.standard import convert_with_tflite_converter
from keras_shufflenet.lite.standard import export_litert

# Moved to `models.lowering`; kept here for older imports.
from keras_shufflenet.models.lowering import RowZeroPadding2D
