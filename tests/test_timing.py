"""Tests of the interleaved timer and its statistics."""

import pytest

from keras_shufflenet.timing import interleaved
from keras_shufflenet.timing import summarize
from keras_shufflenet.train_speed import build
from keras_shufflenet.train_speed import training_throughput


def test_summarize_gives_median_nearest_rank_p90_mean_and_stdev():
    stats = summarize([5, 1, 4, 2, 3, 10, 9, 8, 7, 6])
    assert stats == {"median": 5.5, "p90": 9, "mean": 5.5,
                     "stdev": pytest.approx(3.02765, rel=1e-5), "n": 10}
    assert summarize([2.0])["stdev"] == 0.0
    with pytest.raises(ValueError, match="samples"):
        summarize([])


def test_interleaved_runs_every_candidate_once_per_round_in_turn():
    calls = []
    candidates = {name: (lambda name=name: calls.append(name))
                  for name in ("a", "b", "c")}
    times = interleaved(candidates, rounds=3, warmup=1)
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    with pytest.raises(ValueError, match="rounds"):
        interleaved(candidates, rounds=0)


def test_benchmark_model_names_select_the_lowering():
    model = build("shufflenet_0.25x_g2_dense", (32, 32, 3))
    convs = [l for l in model.layers if hasattr(l, "implementation")]
    assert convs and {c.implementation for c in convs} == {"dense"}
    with pytest.raises(ValueError, match="shufflenet_<scale>x_g<groups>"):
        build("resnet50")


def test_training_throughput_reports_images_per_second():
    results = training_throughput(
        ["shufflenet_0.25x_g3_split"], batch_size=2, image_size=32, rounds=2,
        steps=1, warmup=1,
    )
    stats = results["shufflenet_0.25x_g3_split"]
    assert stats["n"] == 2 and stats["median"] > 0
