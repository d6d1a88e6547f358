"""Timing TFLite interpreters fairly: interleaved runs, several memory
layouts, and a check that the thread count is what was asked.
"""

import os
import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from keras_shufflenet.utils.timing import interleaved_schedule

TIMERS = ("wall", "cpu")
DEFAULT_NUM_RUNS = 50
DEFAULT_WARMUP = 5
DEFAULT_LAYOUTS = 2


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
