"""The on-device latency benchmark: model specs, interleaved timing,
cached conversions, per-block profiles and the reports.
"""

from keras_shufflenet.lite.benchmark.latency import DEFAULT_CALIBRATION_IMAGES
from keras_shufflenet.lite.benchmark.latency import MODES
from keras_shufflenet.lite.benchmark.latency import RESULT_FIELDS
from keras_shufflenet.lite.benchmark.latency import cache_key
from keras_shufflenet.lite.benchmark.latency import calibration_images
from keras_shufflenet.lite.benchmark.latency import convert_cached
from keras_shufflenet.lite.benchmark.latency import cpu_model
from keras_shufflenet.lite.benchmark.latency import environment
from keras_shufflenet.lite.benchmark.latency import model_complexity
from keras_shufflenet.lite.benchmark.latency import run_benchmark
from keras_shufflenet.lite.benchmark.latency import tflite_mode
from keras_shufflenet.lite.benchmark.profiling import block_rows
from keras_shufflenet.lite.benchmark.profiling import profile_blocks
from keras_shufflenet.lite.benchmark.profiling import profile_table
from keras_shufflenet.lite.benchmark.profiling import shufflenet_blocks
from keras_shufflenet.lite.benchmark.reporting import format_value
from keras_shufflenet.lite.benchmark.reporting import markdown_table
from keras_shufflenet.lite.benchmark.reporting import plot_latency
from keras_shufflenet.lite.benchmark.reporting import print_progress
from keras_shufflenet.lite.benchmark.reporting import results_csv
from keras_shufflenet.lite.benchmark.reporting import results_json
from keras_shufflenet.lite.benchmark.reporting import write_outputs
from keras_shufflenet.lite.benchmark.specs import PEERS
from keras_shufflenet.lite.benchmark.specs import RESOLUTIONS
from keras_shufflenet.lite.benchmark.specs import SHUFFLENETS
from keras_shufflenet.lite.benchmark.specs import ModelSpec
from keras_shufflenet.lite.benchmark.specs import default_models
from keras_shufflenet.lite.benchmark.specs import model_specs
from keras_shufflenet.lite.benchmark.specs import parse_resolution
from keras_shufflenet.lite.benchmark.specs import shufflenet_spec
from keras_shufflenet.lite.benchmark.specs import tflite_spec
from keras_shufflenet.lite.benchmark.specs import with_deployment
from keras_shufflenet.lite.benchmark.specs import without_rewrite
from keras_shufflenet.lite.benchmark.timing import DEFAULT_LAYOUTS
from keras_shufflenet.lite.benchmark.timing import DEFAULT_NUM_RUNS
from keras_shufflenet.lite.benchmark.timing import DEFAULT_WARMUP
from keras_shufflenet.lite.benchmark.timing import TIMERS
from keras_shufflenet.lite.benchmark.timing import Runner
from keras_shufflenet.lite.benchmark.timing import creation_orders
from keras_shufflenet.lite.benchmark.timing import measure
from keras_shufflenet.lite.benchmark.timing import measure_in_layouts
from keras_shufflenet.lite.benchmark.timing import thread_check
