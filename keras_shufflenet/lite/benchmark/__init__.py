"""The on-device latency benchmark (Table 8): model specs, interleaved
timing, cached conversions, per-block profiles and the reports.

A user calls `run_benchmark(specs, ...)` with `model_specs(names)` (or
`default_models()`), then `write_outputs`; `profile_blocks` times a
model's prefixes block by block. `tflite/benchmark.py` is the program.
"""

from keras_shufflenet.lite.benchmark.latency import run_benchmark
from keras_shufflenet.lite.benchmark.profiling import profile_blocks
from keras_shufflenet.lite.benchmark.reporting import write_outputs
from keras_shufflenet.lite.benchmark.specs import default_models
from keras_shufflenet.lite.benchmark.specs import model_specs
