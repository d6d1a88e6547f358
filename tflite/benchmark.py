r"""Latency of ShuffleNet and MobileNets with LiteRT + XNNPACK (Table 8).

Converts every model at every resolution and mode (cached on disk), times
them interleaved and writes benchmark.{md,csv,json,png} to --output_dir.

  python tflite/benchmark.py --resolutions=224x224 --modes=float32
  python tflite/benchmark.py --num_runs_large=20          # all of Table 8
  python tflite/benchmark.py --models= --tflite=my.tflite --num_threads=4
  python tflite/benchmark.py --profile=shufflenet_1.0x_g3  # per block
  python tflite/benchmark.py --models=shufflenet_1.0x_g3 --modes=int8 --qat

Every ShuffleNet is also converted the two standard ways (--routes), rows
suffixed [model.export] and [TFLiteConverter], to show that they give the
same graph and latency as keras_shufflenet's converter.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

# numpy's OpenBLAS threads would spin beside the timed interpreter.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Runnable from a source checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_shufflenet.lite import benchmark  # noqa: E402
from keras_shufflenet.lite.benchmark import latency  # noqa: E402
from keras_shufflenet.lite.benchmark import profiling  # noqa: E402
from keras_shufflenet.lite.benchmark import reporting  # noqa: E402
from keras_shufflenet.lite.benchmark import specs as lite_specs  # noqa: E402
from keras_shufflenet.lite.benchmark import timing  # noqa: E402
from keras_shufflenet.utils import files  # noqa: E402

_MODELS = flags.DEFINE_list(
    "models",
    [spec.name for spec in benchmark.default_models()],
    "Models to benchmark: "
    f"{', '.join(s.name for s in benchmark.default_models())}.",
)
_TFLITE = flags.DEFINE_list(
    "tflite", [], "User .tflite files, timed at their own size and type."
)
_BASELINE = flags.DEFINE_bool(
    "baseline",
    False,
    "Also time each ShuffleNet converted straightforwardly (native grouped "
    "convs, plain Keras layers, no rewrites), suffixed [straightforward].",
)
_WITHOUT_REWRITES = flags.DEFINE_list(
    "without_rewrites",
    [],
    "Also time each ShuffleNet with one of the default rewrites (its "
    "layers' lowerings: preprocessing, average_pool, pool_padding, "
    "shuffle_after_stride) left out, suffixed [-REWRITE], to measure what "
    "each gives.",
)
_WITH_REWRITES = flags.DEFINE_list(
    "with_rewrites",
    [],
    "Also time each ShuffleNet with an opt-in rewrite (groupwise_units) "
    "added, suffixed [+REWRITE].",
)
_ROUTES = flags.DEFINE_list(
    "routes",
    list(lite_specs.ROUTE_SUFFIXES),
    "Standard conversions each ShuffleNet also gets a row for: "
    "litert_export (model.export(format='litert'), dynamic batch) and "
    "tflite_converter (SavedModel + tf.lite.TFLiteConverter).",
)
_QAT = flags.DEFINE_bool(
    "qat",
    False,
    "Also time each ShuffleNet's quantization-aware int8 model (same "
    "weights, ranges calibrated; `keras_shufflenet.qat`, the [qat] extra) "
    "at the first resolution, beside its post-training int8 row.",
)
_RESOLUTIONS = flags.DEFINE_list(
    "resolutions", list(lite_specs.RESOLUTIONS), "HEIGHTxWIDTH sizes."
)
_MODES = flags.DEFINE_list("modes", ["float32", "int8"], "Conversion modes.")
_NUM_THREADS = flags.DEFINE_integer(
    "num_threads", 1, "Interpreter threads; Table 8 is single-thread."
)
_NUM_RUNS = flags.DEFINE_integer(
    "num_runs", timing.DEFAULT_NUM_RUNS, "Timed invokes per model."
)
_NUM_RUNS_LARGE = flags.DEFINE_integer(
    "num_runs_large",
    None,
    "Timed invokes at resolutions above 224x224. Defaults to --num_runs.",
)
_WARMUP = flags.DEFINE_integer(
    "warmup", timing.DEFAULT_WARMUP, "Untimed invokes per model first."
)
_TIMER = flags.DEFINE_enum(
    "timer",
    "wall",
    timing.TIMERS,
    "wall: elapsed time. cpu: the invoking thread's CPU time, which other "
    "processes on a shared machine do not inflate (one thread only).",
)
_LAYOUTS = flags.DEFINE_integer(
    "layouts",
    timing.DEFAULT_LAYOUTS,
    "Times every interpreter is created anew (forward, reverse, then "
    "random order), with the runs split among them: cancels the bias of "
    "where a model's memory lands.",
)
_CALIBRATION_IMAGES = flags.DEFINE_integer(
    "calibration_images",
    latency.NUM_RANDOM_CALIBRATION_IMAGES,
    "Random images calibrating int8 models (latency only, not accuracy).",
)
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir", None, "Converted models. Defaults to "
    "~/.cache/keras_shufflenet/tflite."
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "benchmark_results", "Where the results go."
)
_PROFILE = flags.DEFINE_string(
    "profile",
    None,
    "Instead of the table, time each block of this ShuffleNet through "
    "truncated models (--resolutions[0], --modes[0]).",
)


def _qat_spec(spec):
    """Converts `spec`'s QAT int8 model (logits) into the cache dir."""
    from keras_shufflenet import qat

    resolution = _RESOLUTIONS.value[0]
    size = lite_specs.RESOLUTIONS.get(resolution) or (
        lite_specs.parse_resolution(resolution)
    )
    path = os.path.join(_OUTPUT_DIR.value, f"{spec.name}_qat_int8.tflite")
    model = spec.build(tuple(size) + (3,), True)
    images = latency.random_calibration_images(size, _CALIBRATION_IMAGES.value)
    qat.convert_qat(qat.calibrated_qat_model(model, images), path)
    return lite_specs.tflite_spec(path)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # TF's SavedModel chatter.
    progress = reporting.print_progress
    if _PROFILE.value:
        (spec,) = benchmark.model_specs([_PROFILE.value])
        resolution = _RESOLUTIONS.value[0]
        rows = benchmark.profile_blocks(
            spec,
            lite_specs.RESOLUTIONS.get(resolution)
            or lite_specs.parse_resolution(resolution),
            _MODES.value[0],
            num_threads=_NUM_THREADS.value,
            num_runs=_NUM_RUNS.value,
            warmup=_WARMUP.value,
            cache_dir=_CACHE_DIR.value,
            timer=_TIMER.value,
            layouts=_LAYOUTS.value,
            progress=progress,
        )
        table = profiling.profile_table(rows)
        stem = f"profile_{spec.name}_{resolution}_{_MODES.value[0]}"
        path = os.path.join(_OUTPUT_DIR.value, f"{stem}.md")
        files.write_atomic(path, table)
        print(table)
        print(f"Wrote {path}")
        return
    specs = benchmark.model_specs(_MODELS.value)
    if _BASELINE.value:
        specs += [
            lite_specs.with_deployment(spec, "[straightforward]", rewrites=())
            for spec in specs
            if spec.family == "shufflenet"
        ]
    shufflenets = [
        spec for spec in specs
        if spec.family == "shufflenet" and spec.deployment is None
    ]
    variants = [
        (_WITHOUT_REWRITES, lite_specs.without_rewrite),
        (_WITH_REWRITES, lite_specs.with_rewrite),
        (_ROUTES, lite_specs.with_route),
    ]
    for flag, variant in variants:
        try:
            specs += [
                variant(spec, value)
                for value in flag.value
                for spec in shufflenets
            ]
        except ValueError as e:
            raise app.UsageError(f"--{flag.name}: {e}") from None
    specs += [lite_specs.tflite_spec(path) for path in _TFLITE.value]
    if _QAT.value:
        specs += [_qat_spec(spec) for spec in shufflenets]
    large = {
        name: _NUM_RUNS_LARGE.value
        for name in _RESOLUTIONS.value
        if _NUM_RUNS_LARGE.value is not None and name != "224x224"
    }
    result = benchmark.run_benchmark(
        specs,
        _RESOLUTIONS.value,
        _MODES.value,
        num_threads=_NUM_THREADS.value,
        num_runs=_NUM_RUNS.value,
        warmup=_WARMUP.value,
        num_runs_by_resolution=large,
        cache_dir=_CACHE_DIR.value,
        num_calibration_images=_CALIBRATION_IMAGES.value,
        timer=_TIMER.value,
        layouts=_LAYOUTS.value,
        progress=progress,
    )
    paths = benchmark.write_outputs(result, _OUTPUT_DIR.value)
    print(reporting.markdown_table(result))
    bad = [r["model"] for r in result["results"] if not r["threads_ok"]]
    if bad:
        print(f"WARNING: the thread check failed for {bad}.")
    print("Wrote " + ", ".join(paths.values()))


if __name__ == "__main__":
    app.run(main)
