"""Tests of the timing statistics and the interleaved schedule."""

import numpy as np
import pytest

from keras_shufflenet.utils import timing


def test_timing_stats_on_known_data():
    stats = timing.timing_stats([k / 1000 for k in range(10, 0, -1)])
    assert stats["num_runs"] == 10
    assert stats["median_ms"] == pytest.approx(5.5)
    # numpy's linear interpolation: rank 0.9 * 9 = 8.1 -> 9 + 0.1.
    assert stats["p90_ms"] == pytest.approx(9.1)
    assert stats["mean_ms"] == pytest.approx(5.5)
    assert stats["stdev_ms"] == pytest.approx(np.sqrt(55 / 6))
    assert stats["min_ms"] == pytest.approx(1.0)


def test_timing_stats_of_one_sample_and_of_none():
    assert timing.timing_stats([0.002])["stdev_ms"] == 0.0
    with pytest.raises(ValueError, match="no timings"):
        timing.timing_stats([])


def test_schedule_runs_every_model_once_per_round_from_a_rotating_start():
    schedule = timing.interleaved_schedule(["a", "b", "c"], 3)
    assert schedule == [
        (0, "a"), (0, "b"), (0, "c"),
        (1, "b"), (1, "c"), (1, "a"),
        (2, "c"), (2, "a"), (2, "b"),
    ]
