"""Timing statistics and interleaved schedules, for the latency and the
training-throughput benchmarks.
"""

import numpy as np


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
