"""Interleaved timing: every candidate runs once per round, in turn, so
that the noise of a shared machine hits all of them alike."""

import statistics
import time


def summarize(samples):
    """Median, p90, mean and standard deviation of a list of numbers.

    Args:
        samples: A non-empty sequence of numbers.

    Returns:
        A dict with keys `median`, `p90`, `mean`, `stdev`, `n`.
    """
    if not samples:
        raise ValueError("`samples` must not be empty.")
    ordered = sorted(samples)
    # Nearest-rank p90: the smallest sample with 90% at or below it.
    p90 = ordered[max(0, -(-9 * len(ordered) // 10) - 1)]
    return {
        "median": statistics.median(ordered),
        "p90": p90,
        "mean": statistics.fmean(ordered),
        "stdev": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
        "n": len(ordered),
    }


def interleaved(candidates, rounds, warmup=1, progress=None):
    """Times callables in interleaved rounds.

    Args:
        candidates: Dict of name to a zero-argument callable; one call is one
            timed sample.
        rounds: Number of rounds; each times every candidate once.
        warmup: Untimed calls of each candidate before the first round.
            Defaults to 1.
        progress: Optional callable given `(round_index, name, seconds)`.

    Returns:
        A dict of name to the list of per-round seconds.
    """
    if rounds < 1:
        raise ValueError(f"`rounds` must be at least 1. Received: {rounds}")
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in candidates}
    for r in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            seconds = time.perf_counter() - start
            times[name].append(seconds)
            if progress is not None:
                progress(r, name, seconds)
    return times
