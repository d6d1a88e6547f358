"""On-device latency benchmark in the form of Table 8 of the paper: LiteRT
with XNNPACK, single thread by default, ShuffleNet against MobileNets."""

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import re
import sys
import time

import numpy as np

from keras_shufflenet.files import write_atomic

# Table 8's three input resolutions, (height, width).
RESOLUTIONS = {
    "224x224": (224, 224),
    "480x640": (480, 640),
    "720x1280": (720, 1280),
}
MODES = ("float32", "int8")
TIMERS = ("wall", "cpu")
DEFAULT_NUM_RUNS = 50
DEFAULT_WARMUP = 5
DEFAULT_LAYOUTS = 2
DEFAULT_CALIBRATION_IMAGES = 8
# Sources that define the converted graphs, so they key the cache. The
# converter settings (export.py) do not: clear the cache after changing
# them.
_SOURCES = ("deploy.py", "layers.py", "shufflenet.py")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model to benchmark: built by Keras and converted, or a `.tflite`.

    Args:
        name: Row name, e.g. `"shufflenet_1.0x_g3"`.
        family: Plot colour group, e.g. `"shufflenet"` or `"mobilenet_v2"`.
        builder: For Keras models, `builder(input_shape, logits)` returning
            the model; `logits=True` asks for no final softmax.
        kwargs: The builder's configuration, part of the cache key.
        deployment: Arguments of `deploy.deployment_model` for this model,
            e.g. `{"rewrites": ()}`. Defaults to None (the default
            deployment graph).
        path: For a user `.tflite`, its path (its resolution and mode are
            the file's). Defaults to None.
    """

    name: str
    family: str
    builder: object = None
    kwargs: tuple = ()
    deployment: tuple = None
    path: str = None

    def build(self, input_shape, logits):
        return self.builder(input_shape, logits)


def _shufflenet_builder(scale, groups, **extra):
    def build(input_shape, logits):
        from keras_shufflenet.shufflenet import ShuffleNet

        return ShuffleNet(
            scale,
            groups,
            input_shape=input_shape,
            classifier_activation=None if logits else "softmax",
            **extra,
        )

    return build


def shufflenet_spec(scale, groups=3, deployment=None, suffix="", **kwargs):
    """Returns the `ModelSpec` of `ShuffleNet(scale, groups, **kwargs)`.

    Args:
        scale: Width multiplier.
        groups: Groups. Defaults to 3 (Table 8's).
        deployment: `deploy.deployment_model` arguments. Defaults to None.
        suffix: Appended to the row name, e.g. `"[straightforward]"`.
        **kwargs: More `ShuffleNet` arguments.

    Returns:
        A `ModelSpec` named like `"shufflenet_1.0x_g3"`.
    """
    return ModelSpec(
        name=f"shufflenet_{float(scale)}x_g{groups}{suffix}",
        family="shufflenet",
        builder=_shufflenet_builder(scale, groups, **kwargs),
        kwargs=(("scale", scale), ("groups", groups))
        + tuple(sorted(kwargs.items())),
        deployment=None if deployment is None else tuple(
            sorted(deployment.items())
        ),
    )


def with_deployment(spec, suffix, **deployment):
    """A copy of `spec` exported with other `deployment_model` arguments.

    Args:
        spec: A Keras `ModelSpec`.
        suffix: Appended to the name, e.g. `"[straightforward]"`.
        **deployment: `deploy.deployment_model` arguments, e.g.
            `rewrites=()` for the straightforward graph.

    Returns:
        A `ModelSpec`.
    """
    return dataclasses.replace(
        spec,
        name=spec.name + suffix,
        deployment=tuple(sorted(deployment.items())),
    )


def without_rewrite(spec, rewrite):
    """A copy of `spec` exported with one deployment rewrite left out.

    Args:
        spec: A Keras `ModelSpec` with the default deployment graph.
        rewrite: A name in `deploy.REWRITES`.

    Returns:
        A `ModelSpec` named like `"shufflenet_1.0x_g3[-groupwise_units]"`.
    """
    from keras_shufflenet import deploy

    if rewrite not in deploy.REWRITES:
        raise ValueError(
            f"{rewrite!r} is not one of {', '.join(deploy.REWRITES)}."
        )
    return with_deployment(
        spec,
        f"[-{rewrite}]",
        rewrites=tuple(r for r in deploy.REWRITES if r != rewrite),
    )


def _peer_builder(name, **extra):
    def build(input_shape, logits):
        import keras

        constructor = getattr(keras.applications, name)
        return constructor(
            input_shape=input_shape,
            weights=None,
            classifier_activation=None if logits else "softmax",
            **extra,
        )

    return build


def _peer(name, family, constructor, **kwargs):
    return ModelSpec(
        name=name,
        family=family,
        builder=_peer_builder(constructor, **kwargs),
        kwargs=(("constructor", constructor),) + tuple(sorted(kwargs.items())),
    )


# The comparison models from `keras.applications` (random weights), with
# the FLOPs the papers list: MobileNet (Table 8's comparison) 569/149/41 M,
# MobileNetV2 300/97/59 M, MobileNetV3 Large/Small 217/57 M.
PEERS = {
    spec.name: spec
    for spec in (
        _peer("mobilenet_1.0", "mobilenet", "MobileNet", alpha=1.0),
        _peer("mobilenet_0.5", "mobilenet", "MobileNet", alpha=0.5),
        _peer("mobilenet_0.25", "mobilenet", "MobileNet", alpha=0.25),
        _peer("mobilenet_v2_1.0", "mobilenet_v2", "MobileNetV2", alpha=1.0),
        _peer("mobilenet_v2_0.5", "mobilenet_v2", "MobileNetV2", alpha=0.5),
        _peer(
            "mobilenet_v2_0.35", "mobilenet_v2", "MobileNetV2", alpha=0.35
        ),
        _peer("mobilenet_v3_small", "mobilenet_v3", "MobileNetV3Small"),
        _peer("mobilenet_v3_large", "mobilenet_v3", "MobileNetV3Large"),
    )
}
# Table 8's ShuffleNet rows.
SHUFFLENETS = {
    spec.name: spec
    for spec in (shufflenet_spec(s, 3) for s in (0.5, 1.0, 2.0))
}


def default_models():
    """Table 8's ShuffleNets followed by every peer, as `ModelSpec`s."""
    return list(SHUFFLENETS.values()) + list(PEERS.values())


_SHUFFLENET_NAME = re.compile(r"shufflenet_(\d+(?:\.\d+)?)x_g(\d+)")


def model_specs(names):
    """Looks up `ModelSpec`s by name (see `SHUFFLENETS` and `PEERS`).

    Args:
        names: Model names, such as `"mobilenet_0.5"` or
            `"shufflenet_<scale>x_g<groups>"` for any ShuffleNet, e.g.
            `"shufflenet_1.0x_g1"`.

    Returns:
        A list of `ModelSpec`s in the given order.
    """
    from keras_shufflenet.shufflenet import shufflenet_widths

    known = {**SHUFFLENETS, **PEERS}
    specs = []
    for name in names:
        match = _SHUFFLENET_NAME.fullmatch(name)
        if name in known:
            specs.append(known[name])
        elif match:
            scale, groups = float(match[1]), int(match[2])
            shufflenet_widths(scale, groups)  # Names a bad scale or groups.
            specs.append(shufflenet_spec(scale, groups))
        else:
            raise ValueError(
                f"Unknown model {name!r}; expected one of {sorted(known)} "
                "or shufflenet_<scale>x_g<groups>."
            )
    return specs


def tflite_spec(path):
    """A `ModelSpec` for a user `.tflite` file, named after the file."""
    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ValueError(
            f"Expected a .tflite file. Received: {path!r}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TFLite model not found: {path}")
    name = os.path.splitext(os.path.basename(path))[0]
    return ModelSpec(name=name, family="tflite", path=path)


def parse_resolution(text):
    """Parses `"480x640"` (height x width) into `(480, 640)`."""
    try:
        height, width = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(
            "A resolution is HEIGHTxWIDTH, such as 224x224 or 480x640. "
            f"Received: {text!r}"
        ) from None
    if height < 32 or width < 32:
        raise ValueError(
            f"Resolutions must be at least 32x32. Received: {text!r}"
        )
    return height, width


# ---------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------


def timing_stats(seconds):
    """Summarises per-invoke times.

    Args:
        seconds: A sequence of durations in seconds.

    Returns:
        A dict in milliseconds: `median_ms`, `p90_ms` (linear
        interpolation between order statistics, as `numpy.percentile`),
        `mean_ms`, `stdev_ms` (sample standard deviation, 0 for one
        sample), `min_ms`, and `num_runs`.
    """
    ms = np.asarray(list(seconds), dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("`seconds` holds no timings.")
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(np.mean(ms)),
        "stdev_ms": float(np.std(ms, ddof=1)) if ms.size > 1 else 0.0,
        "min_ms": float(np.min(ms)),
        "num_runs": int(ms.size),
    }


def interleaved_schedule(names, rounds):
    """The order in which `measure` invokes models.

    Every round runs each model once, so that load from other processes,
    thermal throttling and frequency changes hit all models alike. The
    starting model rotates by one per round, so that no model always runs
    right after the same neighbour (whose cache footprint it inherits).

    Args:
        names: Model names.
        rounds: Number of rounds.

    Returns:
        A list of `(round, name)` pairs.
    """
    names = list(names)
    n = len(names)
    return [
        (r, names[(r + i) % n]) for r in range(rounds) for i in range(n)
    ]


def creation_orders(n, layouts, seed=0):
    """Orders in which to create `n` interpreters, one per layout.

    Forward, then reverse (so a bias by creation rank cancels over the
    two), then seeded random permutations.

    Args:
        n: Number of interpreters.
        layouts: Number of orders.
        seed: Seed of the random orders. Defaults to 0.

    Returns:
        A list of `layouts` lists, each a permutation of `range(n)`.
    """
    rng = np.random.default_rng(seed)
    orders = []
    for layout in range(layouts):
        if layout == 0:
            orders.append(list(range(n)))
        elif layout == 1:
            orders.append(list(reversed(range(n))))
        else:
            orders.append([int(i) for i in rng.permutation(n)])
    return orders


def measure_in_layouts(paths, num_runs, warmup=DEFAULT_WARMUP,
                       layouts=DEFAULT_LAYOUTS, num_threads=1,
                       progress=None):
    """`measure` with every interpreter created `layouts` times.

    Where an interpreter's memory lands biases its latency (see
    `run_benchmark`), so the runs are split into `layouts` blocks; before
    each, every interpreter is created anew in the next of
    `creation_orders`, and the blocks' times are pooled. The schedule keeps
    the order of `paths`; only the memory moves.

    Args:
        paths: A dict from name to `.tflite` path, in schedule order.
        num_runs: Timed invokes per model, over all layouts.
        warmup: Untimed invokes per model in each layout. Defaults to 5.
        layouts: Number of creation orders. Defaults to 2.
        num_threads: Interpreter threads. Defaults to 1.
        progress: Optional callable taking a status string.

    Returns:
        `(times, runners, threads_started)`: `measure`'s dict pooled over
        the layouts, the last layout's `Runner`s, and per name the
        `Runner.threads_started` of its first layout that started a wrong
        number of threads, else of its last.
    """
    keys = list(paths)
    times, runners, threads_started = {}, {}, {}
    for layout, order in enumerate(creation_orders(len(keys), layouts)):
        runners = {}  # The previous layout's interpreters go first.
        for i in order:
            runners[keys[i]] = Runner(paths[keys[i]], num_threads)
        runners = {key: runners[key] for key in keys}
        share = num_runs // layouts + (layout < num_runs % layouts)
        if share:
            block = measure(runners, share, warmup, progress)
            for key in keys:
                times[key] = _pooled(times.get(key), block[key])
        for key in keys:
            started = runners[key].threads_started
            if threads_started.get(key, num_threads - 1) == num_threads - 1:
                threads_started[key] = started
    return times, runners, threads_started


def _pooled(a, b):
    """`measure`'s times of one model over two blocks, as one."""
    if a is None:
        return b
    return {
        "wall": a["wall"] + b["wall"],
        "cpu": a["cpu"] + b["cpu"],
        "process_cpu_s": a["process_cpu_s"] + b["process_cpu_s"],
        "wall_s": a["wall_s"] + b["wall_s"],
    }


def _os_threads():
    """Threads of this process (Linux /proc), or None elsewhere."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


class Runner:
    """One LiteRT interpreter with XNNPACK, ready to time `invoke()`.

    The input holds random values of the input's dtype; the timing does
    not depend on them.

    Args:
        tflite: `.tflite` bytes or path.
        num_threads: Interpreter (and XNNPACK) threads. Defaults to 1.
        seed: Seed of the random input. Defaults to 0.
    """

    def __init__(self, tflite, num_threads=1, seed=0):
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(tflite, (str, os.PathLike)):
            with open(tflite, "rb") as f:
                tflite = f.read()
        self.num_threads = num_threads
        before = _os_threads()
        self.interpreter = Interpreter(
            model_content=bytes(tflite), num_threads=num_threads
        )
        self.interpreter.allocate_tensors()
        rng = np.random.default_rng(seed)
        for detail in self.interpreter.get_input_details():
            dtype = np.dtype(detail["dtype"])
            if dtype.kind == "f":
                value = rng.uniform(0, 255, detail["shape"])
            else:
                info = np.iinfo(dtype)
                value = rng.integers(info.min, info.max, detail["shape"],
                                     endpoint=True)
            self.interpreter.set_tensor(detail["index"], value.astype(dtype))
        self.interpreter.invoke()
        after = _os_threads()
        # XNNPACK's thread pool starts num_threads - 1 workers.
        self.threads_started = (
            None if before is None or after is None else after - before
        )

    def invoke(self):
        """Runs the model once; returns `(wall_s, thread_cpu_s)`."""
        wall, cpu = time.perf_counter(), time.thread_time()
        self.interpreter.invoke()
        return time.perf_counter() - wall, time.thread_time() - cpu


def measure(runners, num_runs=DEFAULT_NUM_RUNS, warmup=DEFAULT_WARMUP,
            progress=None):
    """Times runners interleaved (see `interleaved_schedule`).

    Args:
        runners: A dict from name to `Runner` (or anything with `invoke()`
            returning `(wall_s, cpu_s)`).
        num_runs: Timed invokes per model. Defaults to 50.
        warmup: Untimed invokes per model first. Defaults to 5.
        progress: Optional callable taking a status string.

    Returns:
        A dict from name to `{"wall": [...], "cpu": [...], "process_cpu_s":
        float, "wall_s": float}`: per-invoke wall and calling-thread CPU
        seconds, and for the whole timed loop the process CPU time (all
        threads) and wall time spent in that model's invokes.
    """
    if num_runs < 1 or warmup < 0:
        raise ValueError(
            "`num_runs` must be >= 1 and `warmup` >= 0. Received: "
            f"num_runs={num_runs}, warmup={warmup}"
        )
    for _, name in interleaved_schedule(runners, warmup):
        runners[name].invoke()
    times = {
        name: {"wall": [], "cpu": [], "process_cpu_s": 0.0, "wall_s": 0.0}
        for name in runners
    }
    schedule = interleaved_schedule(runners, num_runs)
    report_every = max(1, num_runs // 5)
    for i, (round_, name) in enumerate(schedule):
        process = time.process_time()
        wall, cpu = runners[name].invoke()
        entry = times[name]
        entry["process_cpu_s"] += time.process_time() - process
        entry["wall_s"] += wall
        entry["wall"].append(wall)
        entry["cpu"].append(cpu)
        last_of_round = (i + 1) % len(runners) == 0
        if progress and last_of_round and (round_ + 1) % report_every == 0:
            progress(f"  timed round {round_ + 1}/{num_runs}")
    return times


def thread_check(times, num_threads, threads_started=None):
    """Checks that an interpreter ran with `num_threads` threads.

    Two measurements that other processes on the machine do not inflate:
    the OS threads that creating the interpreter started (XNNPACK's pool
    has `num_threads - 1` workers; Linux only), and the share of the
    process CPU time spent outside the calling thread during the timed
    invokes: near 0 for one thread; for more, the share the workers
    actually did (little on a machine busy with other work, where the
    calling thread takes the workers' tiles before they wake).

    Args:
        times: One model's entry of `measure`'s result.
        num_threads: The requested thread count.
        threads_started: `Runner.threads_started`. Defaults to None
            (unknown).

    Returns:
        A dict: `worker_cpu_share`, `cpu_per_wall` (process CPU seconds
        per wall second) and `ok`: the workers started match the setting,
        and one thread used no workers (share below 0.2).
    """
    process = max(times["process_cpu_s"], 1e-12)
    worker_share = max(0.0, 1.0 - sum(times["cpu"]) / process)
    ok = worker_share < 0.2 if num_threads == 1 else True
    if threads_started is not None:
        ok = ok and threads_started == num_threads - 1
    return {
        "worker_cpu_share": float(worker_share),
        "cpu_per_wall": float(
            times["process_cpu_s"] / max(times["wall_s"], 1e-12)
        ),
        "ok": bool(ok),
    }


# ---------------------------------------------------------------------------
# Conversion with an on-disk cache.
# ---------------------------------------------------------------------------


def _source_digest():
    import keras_shufflenet

    package = os.path.dirname(keras_shufflenet.__file__)
    digest = hashlib.sha256()
    for name in _SOURCES:
        with open(os.path.join(package, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def cache_key(spec, resolution, mode, num_calibration_images):
    """Digest of everything that determines a converted model.

    The spec's configuration and deployment arguments, the resolution and
    mode, the calibration set size, the TensorFlow and Keras versions and
    the sources of `keras_shufflenet`'s model and deployment graph
    (`_SOURCES`; changes to the converter settings need a fresh cache).

    Returns:
        A 16-character hex string.
    """
    import keras
    import tensorflow as tf

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


def calibration_images(resolution, num_images=DEFAULT_CALIBRATION_IMAGES,
                       seed=0):
    """Random pixel images for int8 calibration.

    Latency does not depend on the quantization ranges, so random images
    stand in for evaluation images here; use
    `keras_shufflenet.export.calibration_images` for accurate int8 models.
    """
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (num_images,) + tuple(resolution) + (3,))


def convert_cached(spec, resolution, mode, cache_dir,
                   num_calibration_images=DEFAULT_CALIBRATION_IMAGES,
                   progress=None):
    """Converts `spec` at `resolution` in `mode`, or reuses the cached file.

    The conversion is `keras_shufflenet.export.convert` (deployment graph,
    batch-1 SavedModel, builtin ops). int8 models output logits: XNNPACK
    has no int8 SOFTMAX, which would leave a second piece outside it.

    Args:
        spec: A Keras `ModelSpec`.
        resolution: `(height, width)`.
        mode: `"float32"` or `"int8"` (or another `export.MODES` mode).
        cache_dir: Directory of the cached `.tflite` files.
        num_calibration_images: Random images to calibrate int8. Defaults
            to 8.
        progress: Optional callable taking a status string.

    Returns:
        The path of the `.tflite` file.
    """
    from keras_shufflenet import deploy
    from keras_shufflenet import export

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
    if spec.deployment is not None:
        deployment = dict(spec.deployment)
        if "rewrites" in deployment:  # Only those the mode takes.
            deployment["rewrites"] = tuple(
                r for r in deployment["rewrites"]
                if r in deploy.rewrites_for(mode)
            )
        model = deploy.deployment_model(model, **deployment)
    export.convert(
        model,
        path,
        mode=mode,
        calibration_data=(
            calibration_images(resolution, num_calibration_images)
            if mode == "int8" else None
        ),
        num_calibration_images=num_calibration_images,
    )
    if progress:
        progress(
            f"  converted {spec.name} in {time.perf_counter() - start:.0f} s"
        )
    return path


def model_complexity(spec, resolution):
    """FLOPs (multiply-adds) and parameters of a Keras spec at a size."""
    from keras_shufflenet.complexity import complexity

    model = spec.build(tuple(resolution) + (3,), logits=False)
    return complexity(model)


# ---------------------------------------------------------------------------
# The benchmark.
# ---------------------------------------------------------------------------


def environment():
    """Runtime versions and the CPU, recorded with every result.

    Returns:
        A dict: `cpu_model`, `cpu_count`, `machine`, `platform`, `python`,
        and the versions of `ai_edge_litert`, `tensorflow`, `keras`,
        `numpy` and `keras_shufflenet`.
    """
    from importlib import metadata

    def version(package):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    import keras_shufflenet

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
        "keras_shufflenet": keras_shufflenet.__version__,
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
    num_calibration_images=DEFAULT_CALIBRATION_IMAGES,
    timer="wall",
    layouts=DEFAULT_LAYOUTS,
    progress=None,
):
    """Converts (cached) and times every model, mode and resolution.

    All models and modes at one resolution are loaded together and timed
    interleaved (`measure`); resolutions are timed one after another. A
    user `.tflite` runs once, at its own resolution and type.

    Where a model's memory lands biases its latency: interpreters created
    first ran 3-11% slower than identical ones created later (x86, LiteRT
    2.3). So the timed runs are split into `layouts` blocks, and before
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
    "timer", "median_ms", "p90_ms", "mean_ms", "stdev_ms", "min_ms", "num_runs", "cpu_median_ms",
    "cpu_p90_ms", "wall_median_ms", "gflops_per_s", "path",
)


def tflite_mode(tflite):
    """Infers a `.tflite`'s conversion mode from its ops and tensor types.

    Returns:
        `"int8"` (integer activations: QUANTIZE ops or integer input),
        `"dynamic"` (int8 weights, float activations), `"float16"` (float16
        weights) or `"float32"`.
    """
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.interpreter import OpResolverType

    from keras_shufflenet import export

    interpreter = Interpreter(
        model_content=bytes(tflite),
        experimental_op_resolver_type=(
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        ),
    )
    dtypes = {np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    inputs = {np.dtype(t["dtype"]) for t in interpreter.get_input_details()}
    if "QUANTIZE" in export.op_list(tflite) or inputs & {
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
    from keras_shufflenet import export

    with open(path, "rb") as f:
        tflite = f.read()
    coverage = export.xnnpack_coverage(tflite, num_threads=num_threads)
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


# ---------------------------------------------------------------------------
# Where the time goes: blocks timed through truncated models.
# ---------------------------------------------------------------------------


def shufflenet_blocks(model):
    """The last layer of each block of a ShuffleNet, in order.

    Blocks: `stem` (conv1 with BN and ReLU), `pool1`, every unit
    (`stage2_unit1`, ...) and `head` (pooling and classifier).

    Args:
        model: A `ShuffleNet(...)` model.

    Returns:
        A list of `(block, layer name)`; the head's layer is the model's
        last.
    """
    names = [layer.name for layer in model.layers]
    blocks = [("stem", "conv1_relu"), ("pool1", "pool1")]
    for name in names:
        if name.startswith("stage") and name.endswith(("_relu", "_concat")):
            unit = name.rsplit("_", 1)[0]
            if not name.endswith(("gconv1_relu", "branch_relu")):
                blocks.append((unit, name))
    blocks.append(("head", names[-1]))
    missing = [layer for _, layer in blocks if layer not in names]
    if missing:
        raise ValueError(
            f"`model` ({model.name!r}) is not a ShuffleNet: it has no "
            f"layers {missing}."
        )
    return blocks


def _prefix_spec(spec, block, layer):
    def build(input_shape, logits):
        import keras

        model = spec.build(input_shape, logits)
        output = model.get_layer(layer).output
        return keras.Model(model.inputs, output, name=f"{model.name}_{block}")

    return dataclasses.replace(
        spec,
        name=f"{spec.name}@{block}",
        builder=build,
        kwargs=spec.kwargs + (("until", layer),),
    )


def profile_blocks(
    spec,
    resolution=(224, 224),
    mode="float32",
    *,
    blocks=None,
    num_threads=1,
    num_runs=DEFAULT_NUM_RUNS,
    warmup=DEFAULT_WARMUP,
    cache_dir=None,
    timer="wall",
    layouts=DEFAULT_LAYOUTS,
    progress=None,
):
    """Times each block by converting the model truncated after it.

    The model cut after block k is converted and timed like a whole model
    (XNNPACK's fusions stay intact inside it); a block's time is the
    difference of the medians of consecutive truncations, interleaved in
    one run. This is what LiteRT's `benchmark_model
    --enable_op_profiling=true` reports per op, at block granularity, from
    Python.

    Reference:
        Zhang et al., "ShuffleNet", section 4.5 (where actual time goes).

    Args:
        spec: A Keras `ModelSpec`, e.g. `SHUFFLENETS["shufflenet_1.0x_g3"]`.
        resolution: `(height, width)`. Defaults to (224, 224).
        mode: Conversion mode. Defaults to `"float32"`.
        blocks: `(block, last layer name)` pairs. Defaults to
            `shufflenet_blocks` of the model.
        num_threads, num_runs, warmup, cache_dir, timer, layouts,
            progress: As in `run_benchmark`.

    Returns:
        A list of dicts, one per block: `block`, `layer`, `cumulative_ms`,
        `block_ms`, `share` (of the whole model), `mflops` and
        `gflops_per_s` of the block.
    """
    from keras_shufflenet.complexity import complexity

    cache_dir = cache_dir or os.path.join(
        os.path.expanduser("~"), ".cache", "keras_shufflenet", "tflite"
    )
    model = spec.build(tuple(resolution) + (3,), logits=mode == "int8")
    if blocks is None:
        blocks = shufflenet_blocks(model)
    paths, flops = {}, {}
    for block, layer in blocks:
        prefix = _prefix_spec(spec, block, layer)
        paths[block] = convert_cached(
            prefix, resolution, mode, cache_dir, progress=progress
        )
        flops[block] = complexity(prefix.build(
            tuple(resolution) + (3,), logits=mode == "int8"
        ))["flops"]
    if progress:
        progress(f"timing {len(paths)} truncated models ...")
    times, _, _ = measure_in_layouts(
        paths, num_runs, warmup, layouts, num_threads, progress
    )
    medians = {b: timing_stats(times[b][timer])["median_ms"] for b in paths}
    return block_rows(blocks, medians, flops)


def block_rows(blocks, cumulative_ms, cumulative_flops):
    """Per-block time and FLOPs from those of the truncated models.

    Args:
        blocks: `(block, layer)` pairs in order; the last is the model.
        cumulative_ms: `{block: median ms of the model cut after it}`.
        cumulative_flops: `{block: multiply-adds of that model}`.

    Returns:
        The rows `profile_blocks` returns.
    """
    total = cumulative_ms[blocks[-1][0]]
    rows, previous_ms, previous_flops = [], 0.0, 0
    for block, layer in blocks:
        block_ms = cumulative_ms[block] - previous_ms
        block_flops = cumulative_flops[block] - previous_flops
        rows.append(
            {
                "block": block,
                "layer": layer,
                "cumulative_ms": cumulative_ms[block],
                "block_ms": block_ms,
                "share": block_ms / total,
                "mflops": block_flops / 1e6,
                "gflops_per_s": (
                    2 * block_flops / (block_ms * 1e6) if block_ms > 0
                    else None
                ),
            }
        )
        previous_ms = cumulative_ms[block]
        previous_flops = cumulative_flops[block]
    return rows


def profile_table(rows):
    """Renders `profile_blocks`' rows as markdown."""
    lines = [
        "| Block | ms | share | cumulative ms | MFLOPs | GFLOP/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['block']} | {r['block_ms']:.3f} | {100 * r['share']:.1f}% "
            f"| {r['cumulative_ms']:.3f} | {r['mflops']:.1f} "
            f"| {_fmt(r['gflops_per_s'], 1)} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Output: Table 8 markdown, CSV, JSON, plot.
# ---------------------------------------------------------------------------


def _fmt(value, digits=2):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def markdown_table(benchmark):
    """Renders results like Table 8: one row per model and mode.

    Columns: MFLOPs and parameters at the first resolution, `.tflite`
    size, XNNPACK pieces, then per resolution the median latency in ms and
    the achieved GFLOP/s (2 x multiply-adds / median) in parentheses.

    Args:
        benchmark: `run_benchmark`'s result.

    Returns:
        A markdown string, with a caption naming the CPU, runtime, threads,
        timer and number of runs.
    """
    rows = benchmark["results"]
    resolutions = list(dict.fromkeys(r["resolution"] for r in rows))
    order = list(dict.fromkeys((r["model"], r["mode"]) for r in rows))
    cells = {(r["model"], r["mode"], r["resolution"]): r for r in rows}
    header = ["Model", "Mode", "MFLOPs", "Params (M)", "Size (MB)",
              "XNNPACK pieces"]
    header += [f"{res} ms (GFLOP/s)" for res in resolutions]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for model, mode in order:
        first = next(
            cells[(model, mode, res)] for res in resolutions
            if (model, mode, res) in cells
        )
        line = [
            model,
            mode,
            _fmt(first["mflops"], 1),
            _fmt(None if first["params"] is None else first["params"] / 1e6),
            _fmt(first["size_bytes"] / 2**20),
            str(first["xnnpack_pieces"]),
        ]
        for res in resolutions:
            row = cells.get((model, mode, res))
            if row is None:
                line.append("-")
            else:
                line.append(
                    f"{row['median_ms']:.2f} ({_fmt(row['gflops_per_s'], 1)})"
                )
        lines.append("| " + " | ".join(line) + " |")
    env = benchmark["environment"]
    settings = benchmark["settings"]
    runs = {r["resolution"]: r["num_runs"] for r in rows}
    runs = ", ".join(f"{n} runs at {k}" for k, n in runs.items())
    caption = (
        f"Median latency over {runs} "
        f"({settings['timer']} time), {settings['num_threads']} thread(s), "
        f"LiteRT {env['ai_edge_litert']} with XNNPACK on {env['cpu_model']}. "
        "MFLOPs are multiply-adds (the paper's unit) at the first "
        "resolution; GFLOP/s counts 2 FLOPs per multiply-add. int8 models "
        "output logits."
    )
    return "\n".join(lines) + "\n\n" + caption + "\n"


def _flat_row(row, env):
    flat = {field: row.get(field) for field in RESULT_FIELDS}
    for key in ("cpu_model", "ai_edge_litert", "tensorflow", "keras",
                "numpy", "python", "platform"):
        flat[key] = env.get(key)
    return flat


def results_csv(benchmark):
    """Returns the results as CSV text, with runtime versions and CPU."""
    env = benchmark["environment"]
    rows = [_flat_row(r, env) for r in benchmark["results"]]
    fields = list(RESULT_FIELDS) + [
        "cpu_model", "ai_edge_litert", "tensorflow", "keras", "numpy",
        "python", "platform",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def results_json(benchmark):
    """Returns the whole benchmark (environment, settings, rows) as JSON."""
    return json.dumps(benchmark, indent=2, sort_keys=True) + "\n"


def plot_latency(benchmark, path):
    """Plots latency against MFLOPs: one point per model and mode.

    One panel per resolution, log-log axes, colour by family, marker by
    mode. Models without FLOPs (user `.tflite` files) are left out.

    Args:
        benchmark: `run_benchmark`'s result.
        path: The PNG to write (atomically).

    Returns:
        `{resolution: number of points drawn}`.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = [r for r in benchmark["results"] if r["mflops"]]
    resolutions = list(dict.fromkeys(r["resolution"] for r in rows))
    if not rows:
        raise ValueError("No results with FLOPs to plot.")
    families = sorted({r["family"] for r in rows})
    colours = dict(zip(families, plt.cm.tab10.colors))
    markers = {"float32": "o", "int8": "s", "float16": "^", "dynamic": "D"}
    fig, axes = plt.subplots(
        1, len(resolutions), figsize=(6 * len(resolutions), 5), squeeze=False
    )
    points = {}
    for ax, res in zip(axes[0], resolutions):
        for r in rows:
            if r["resolution"] != res:
                continue
            points[res] = points.get(res, 0) + 1
            ax.scatter(
                r["mflops"], r["median_ms"],
                color=colours[r["family"]],
                marker=markers.get(r["mode"], "x"),
                label=f"{r['family']} {r['mode']}",
            )
            ax.annotate(
                r["model"].replace("shufflenet_", "sn_").replace(
                    "mobilenet", "mb"
                ),
                (r["mflops"], r["median_ms"]),
                fontsize=7, xytext=(3, 3), textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("MFLOPs (multiply-adds)")
        ax.set_ylabel(f"median latency, ms ({benchmark['settings']['timer']})")
        ax.set_title(res)
        ax.grid(True, which="both", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7)
    env = benchmark["environment"]
    fig.suptitle(
        f"LiteRT {env['ai_edge_litert']} + XNNPACK, "
        f"{benchmark['settings']['num_threads']} thread(s), "
        f"{env['cpu_model']}",
        fontsize=10,
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return points


def write_outputs(benchmark, output_dir, stem="benchmark"):
    """Writes `<stem>.md`, `.csv`, `.json` and `.png` to `output_dir`.

    Returns:
        A dict from extension to path.
    """
    paths = {
        ext: os.path.join(os.fspath(output_dir), f"{stem}.{ext}")
        for ext in ("md", "csv", "json", "png")
    }
    write_atomic(paths["md"], markdown_table(benchmark))
    write_atomic(paths["csv"], results_csv(benchmark))
    write_atomic(paths["json"], results_json(benchmark))
    if any(r["mflops"] for r in benchmark["results"]):
        plot_latency(benchmark, paths["png"])
    else:
        del paths["png"]
    return paths


def print_progress(message):
    """A `progress` callable printing to stderr immediately."""
    print(message, file=sys.stderr, flush=True)

