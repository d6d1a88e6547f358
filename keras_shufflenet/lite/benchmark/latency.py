"""On-device latency benchmark in the form of Table 8 of the paper: LiteRT
with XNNPACK, single thread by default, ShuffleNet against MobileNets.
"""

import hashlib
import json
import os
import platform
import time
from importlib import metadata

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.interpreter import OpResolverType

from keras_shufflenet.lite.benchmark.specs import RESOLUTIONS
from keras_shufflenet.lite.benchmark.specs import parse_resolution
from keras_shufflenet.lite.benchmark.timing import DEFAULT_LAYOUTS
from keras_shufflenet.lite.benchmark.timing import DEFAULT_NUM_RUNS
from keras_shufflenet.lite.benchmark.timing import DEFAULT_WARMUP
from keras_shufflenet.lite.benchmark.timing import TIMERS
from keras_shufflenet.lite.benchmark.timing import measure_in_layouts
from keras_shufflenet.lite.benchmark.timing import thread_check
from keras_shufflenet.lite.conversion import convert
from keras_shufflenet.lite.inspection import op_list
from keras_shufflenet.lite.inspection import xnnpack_coverage
from keras_shufflenet.lite.rewrite import deployment_model
from keras_shufflenet.lite.standard import STANDARD_ROUTES
from keras_shufflenet.models.complexity import complexity
from keras_shufflenet.utils.timing import timing_stats
from keras_shufflenet.version import __version__

# Latency does not depend on the quantization ranges: a few random images
# calibrate the int8 conversions.
NUM_RANDOM_CALIBRATION_IMAGES = 8
# Sources that define the converted graphs, so they key the cache. The
# converter settings (lite/tflite_converter.py) do not: clear the cache
# after changing them.
_GRAPH_SOURCES = (
    "lite/rewrite.py", "models/graph.py", "models/layers.py",
    "models/parts.py", "models/shufflenet.py", "models/lowering.py",
    "lite/standard.py",
)
_PACKAGE_DIR = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def _source_digest():
    digest = hashlib.sha256()
    for name in _GRAPH_SOURCES:
        with open(os.path.join(_PACKAGE_DIR, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def cache_key(spec, resolution, mode, num_calibration_images):
    """Digest of everything that determines a converted model.

    The spec's configuration and deployment arguments, the resolution and
    mode, the calibration set size, the TensorFlow and Keras versions and
    the sources of `keras_shufflenet`'s model and deployment graph
    (`_GRAPH_SOURCES`; changes to the converter settings need a fresh cache).

    Returns:
        A 16-character hex string.
    """
    payload = json.dumps(
        {
            "name": spec.name,
            "kwargs": [list(map(str, kv)) for kv in spec.kwargs],
            "deployment": repr(spec.deployment),
            "resolution": list(resolution),
            "mode": mode,
            "calibration": num_calibration_images if mode == "int8" else 0,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "sources": _source_digest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def random_calibration_images(
    resolution, num_images=NUM_RANDOM_CALIBRATION_IMAGES, seed=0
):
    """Random pixel images for int8 calibration.

    Latency does not depend on the quantization ranges, so random images
    stand in for evaluation images here; use
    `keras_shufflenet.lite.calibration_images` for accurate int8 models.
    """
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (num_images,) + tuple(resolution) + (3,))


def convert_cached(spec, resolution, mode, cache_dir,
                   num_calibration_images=NUM_RANDOM_CALIBRATION_IMAGES,
                   progress=None):
    """Converts `spec` at `resolution` in `mode`, or reuses the cached file.

    The conversion is `keras_shufflenet.lite.convert` (deployment graph,
    batch-1 SavedModel, builtin ops). int8 models output logits: XNNPACK
    has no int8 SOFTMAX, which would leave a second piece outside it.

    Args:
        spec: A Keras `ModelSpec`.
        resolution: `(height, width)`.
        mode: `"float32"` or `"int8"` (or another `keras_shufflenet.lite.MODES` mode).
        cache_dir: Directory of the cached `.tflite` files.
        num_calibration_images: Random images to calibrate int8. Defaults
            to 8.
        progress: Optional callable taking a status string.

    Returns:
        The path of the `.tflite` file.
    """
    if spec.path is not None:
        raise ValueError(f"{spec.name} is a .tflite file; nothing to convert.")
    key = cache_key(spec, resolution, mode, num_calibration_images)
    height, width = resolution
    path = os.path.join(
        os.fspath(cache_dir),
        f"{spec.name}_{height}x{width}_{mode}_{key}.tflite",
    )
    if os.path.isfile(path):
        return path
    if progress:
        progress(f"converting {spec.name} at {height}x{width} to {mode} ...")
    start = time.perf_counter()
    model = spec.build((height, width, 3), logits=mode == "int8")
    calibration = (
        random_calibration_images(resolution, num_calibration_images)
        if mode == "int8" else None
    )
    if spec.route in STANDARD_ROUTES:
        STANDARD_ROUTES[spec.route](model, path, mode, calibration)
        return _converted(spec, path, start, progress)
    if spec.deployment is not None:
        model = deployment_model(model, **dict(spec.deployment))
    convert(
        model,
        path,
        mode=mode,
        calibration_data=calibration,
        num_calibration_images=num_calibration_images,
    )
    return _converted(spec, path, start, progress)


def _converted(spec, path, start, progress):
    if progress:
        progress(
            f"  converted {spec.name} in {time.perf_counter() - start:.0f} s"
        )
    return path


def model_complexity(spec, resolution):
    """FLOPs (multiply-adds) and parameters of a Keras spec at a size."""

    model = spec.build(tuple(resolution) + (3,), logits=False)
    return complexity(model)


def environment():
    """Runtime versions and the CPU, recorded with every result.

    Returns:
        A dict: `cpu_model`, `cpu_count`, `machine`, `platform`, `python`,
        and the versions of `ai_edge_litert`, `tensorflow`, `keras`,
        `numpy` and `keras_shufflenet`.
    """

    def version(package):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None


    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ai_edge_litert": version("ai-edge-litert"),
        "tensorflow": version("tensorflow"),
        "keras": version("keras"),
        "numpy": np.__version__,
        "keras_shufflenet": __version__,
    }


def cpu_model():
    """The CPU's marketing name from /proc/cpuinfo, or `platform`'s."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                # x86 says "model name"; ARM boards "Hardware" or "Model".
                if key.strip() in ("model name", "Hardware", "Model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_benchmark(
    specs,
    resolutions=("224x224",),
    modes=("float32",),
    *,
    num_threads=1,
    num_runs=DEFAULT_NUM_RUNS,
    warmup=DEFAULT_WARMUP,
    num_runs_by_resolution=None,
    cache_dir=None,
    num_calibration_images=NUM_RANDOM_CALIBRATION_IMAGES,
    timer="wall",
    layouts=DEFAULT_LAYOUTS,
    progress=None,
):
    """Converts (cached) and times every model, mode and resolution.

    All models and modes at one resolution are loaded together and timed
    interleaved (`measure`); resolutions are timed one after another. A
    user `.tflite` runs once, at its own resolution and type.

    Where a model's memory lands biases its latency: interpreters created
    first ran slower than identical ones created later (tflite/README.md,
    "How it times"). So the timed runs are split into `layouts` blocks,
    and before
    each block every interpreter is created anew, in forward order, then
    reverse order, then seeded random orders; the blocks' times are
    pooled.

    Reference:
        Zhang et al., "ShuffleNet", section 4.5 and Table 8 (single-thread
        inference time at 224x224, 480x640 and 720x1280).

    Args:
        specs: `ModelSpec`s (`default_models()`, `tflite_spec(path)`).
        resolutions: Names in `RESOLUTIONS` or `"HxW"` strings. Defaults
            to `("224x224",)`.
        modes: Conversion modes. Defaults to `("float32",)`.
        num_threads: Interpreter threads. Defaults to 1 (Table 8).
        num_runs: Timed invokes per model. Defaults to 50.
        warmup: Untimed invokes first. Defaults to 5.
        num_runs_by_resolution: Optional `{resolution: num_runs}` for the
            slow large resolutions.
        cache_dir: Directory for converted models. Defaults to
            `~/.cache/keras_shufflenet/tflite`.
        num_calibration_images: Random images for int8. Defaults to 8.
        timer: `"wall"` (default) or `"cpu"`, the calling thread's CPU
            time: immune to other processes on a shared machine, and
            complete for one thread only.
        layouts: Times every interpreter is created, each time in another
            order, with the runs split among them. Defaults to 2.
        progress: Optional callable taking a status string.

    Returns:
        A dict: `environment`, `settings` and `results`, a list of row
        dicts (see `RESULT_FIELDS`).
    """
    if not isinstance(layouts, int) or layouts < 1:
        raise ValueError(
            f"`layouts` must be a positive int. Received: layouts={layouts!r}"
        )
    if timer not in TIMERS:
        raise ValueError(
            f"`timer` must be one of {TIMERS}. Received: timer={timer!r}"
        )
    if timer == "cpu" and num_threads != 1:
        raise ValueError(
            "timer='cpu' measures the calling thread only; use it with "
            f"num_threads=1. Received: num_threads={num_threads}"
        )
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(
            "`num_threads` must be a positive int. Received: "
            f"num_threads={num_threads!r}"
        )
    cache_dir = cache_dir or os.path.join(
        os.path.expanduser("~"), ".cache", "keras_shufflenet", "tflite"
    )
    resolutions = [
        (name, RESOLUTIONS.get(name) or parse_resolution(name))
        for name in resolutions
    ]
    num_runs_by_resolution = dict(num_runs_by_resolution or {})
    complexities = {}
    results = []
    groups = []
    for name, resolution in resolutions:
        entries = []
        for spec in specs:
            if spec.path is not None:
                continue
            for mode in modes:
                path = convert_cached(
                    spec, resolution, mode, cache_dir,
                    num_calibration_images, progress,
                )
                entries.append((spec, mode, path))
        groups.append((name, resolution, entries))
    user = [spec for spec in specs if spec.path is not None]
    if user:
        groups.append(("user", None, [(s, None, s.path) for s in user]))

    for name, resolution, entries in groups:
        if not entries:
            continue
        if progress:
            progress(f"timing {len(entries)} models at {name} ...")
        paths = {(spec.name, mode, path): path for spec, mode, path in entries}
        runs = num_runs_by_resolution.get(name, num_runs)
        times, runners, threads_started = measure_in_layouts(
            paths, runs, warmup, layouts, num_threads, progress
        )
        for spec, mode, path in entries:
            key = (spec.name, mode, path)
            row = _result_row(
                spec, mode, path, resolution, runners[key], times[key],
                num_threads, timer, complexities, threads_started[key],
            )
            results.append(row)
        del runners
    return {
        "environment": environment(),
        "settings": {
            "num_threads": num_threads,
            "num_runs": num_runs,
            "num_runs_by_resolution": num_runs_by_resolution,
            "warmup": warmup,
            "timer": timer,
            "layouts": layouts,
            "num_calibration_images": num_calibration_images,
            "delegate": "XNNPACK (LiteRT default)",
        },
        "results": results,
    }


RESULT_FIELDS = (
    "model", "family", "mode", "resolution", "mflops", "params",
    "size_bytes", "xnnpack_pieces", "ops_left_out", "num_threads",
    "threads_started", "worker_cpu_share", "cpu_per_wall", "threads_ok",
    "timer", "median_ms", "p90_ms", "mean_ms", "stdev_ms", "min_ms",
    "num_runs", "cpu_median_ms",
    "cpu_p90_ms", "wall_median_ms", "gflops_per_s", "path",
)


def tflite_mode(tflite):
    """Infers a `.tflite`'s conversion mode from its ops and tensor types.

    Returns:
        `"int8"` (integer activations: QUANTIZE ops or integer input),
        `"dynamic"` (int8 weights, float activations), `"float16"` (float16
        weights) or `"float32"`.
    """
    interpreter = Interpreter(
        model_content=bytes(tflite),
        experimental_op_resolver_type=(
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        ),
    )
    dtypes = {np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    inputs = {np.dtype(t["dtype"]) for t in interpreter.get_input_details()}
    if "QUANTIZE" in op_list(tflite) or inputs & {
        np.dtype(np.int8), np.dtype(np.uint8)
    }:
        return "int8"
    if np.dtype(np.int8) in dtypes:
        return "dynamic"
    if np.dtype(np.float16) in dtypes:
        return "float16"
    return "float32"


def _result_row(spec, mode, path, resolution, runner, times, num_threads,
                timer, complexities, threads_started):

    with open(path, "rb") as f:
        tflite = f.read()
    coverage = xnnpack_coverage(tflite, num_threads=num_threads)
    detail = runner.interpreter.get_input_details()[0]
    height, width = (int(v) for v in detail["shape"][1:3])
    if mode is None:
        mode = tflite_mode(tflite)
    flops = params = None
    if spec.path is None:
        key = (spec.name, tuple(resolution))
        if key not in complexities:
            complexities[key] = model_complexity(spec, resolution)
        flops = complexities[key]["flops"]
        params = complexities[key]["params"]
    chosen = timing_stats(times[timer])
    cpu = timing_stats(times["cpu"])
    wall = timing_stats(times["wall"])
    check = thread_check(times, num_threads, threads_started)
    row = {
        "model": spec.name,
        "family": spec.family,
        "mode": mode,
        "resolution": f"{height}x{width}",
        "mflops": None if flops is None else flops / 1e6,
        "params": params,
        "size_bytes": len(tflite),
        "xnnpack_pieces": coverage["pieces"],
        "ops_left_out": ";".join(
            f"{k}x{v}" for k, v in coverage["ops_left_out"].items()
        ),
        "num_threads": num_threads,
        "threads_started": threads_started,
        "worker_cpu_share": check["worker_cpu_share"],
        "cpu_per_wall": check["cpu_per_wall"],
        "threads_ok": check["ok"],
        "timer": timer,
        **chosen,
        "cpu_median_ms": cpu["median_ms"],
        "cpu_p90_ms": cpu["p90_ms"],
        "wall_median_ms": wall["median_ms"],
        # One multiply-add is two floating-point operations.
        "gflops_per_s": (
            None if flops is None else 2 * flops / (chosen["median_ms"] * 1e6)
        ),
        "path": os.fspath(path),
    }
    return row
