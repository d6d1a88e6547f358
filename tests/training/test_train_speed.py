"""Tests of the training throughput benchmark."""

import os
import sys

import pytest

from keras_shufflenet.training import fused
from keras_shufflenet.training import throughput
from keras_shufflenet.training.throughput import build_bench_model
from keras_shufflenet.training.throughput import training_throughput

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def test_benchmark_model_names_select_the_lowering():
    model = build_bench_model("shufflenet_0.25x_g2_dense", (32, 32, 3))
    convs = [layer for layer in model.layers if hasattr(layer, "implementation")]
    assert convs and {c.implementation for c in convs} == {"dense"}
    with pytest.raises(ValueError, match="shufflenet_<scale>x_g<groups>"):
        build_bench_model("resnet50")


def test_fused_benchmark_model_is_the_training_graph_of_the_split_model():
    model = build_bench_model("shufflenet_0.25x_g3_fused", (32, 32, 3))
    units = [
        layer for layer in model.layers
        if isinstance(layer, fused.FusedShuffleUnit)
    ]
    assert len(units) == 13
    assert {u.gconv1.implementation for u in units} == {"split"}


def test_training_throughput_reports_images_per_second():
    results = training_throughput(
        ["shufflenet_0.25x_g3_shallow_split", "shufflenet_0.25x_g1_shallow_split"],
        batch_size=2, image_size=32, rounds=2, steps=1, warmup=1,
    )
    for stats in results.values():
        assert stats["n"] == 2
        assert 0 < stats["p90"] <= stats["median"]


@pytest.mark.long
def test_backends_take_turns_in_one_run_of_bench_train():
    """recipes/bench_train.py --backends: one worker per backend, each
    answering for its own models, every (backend, model) pair timed."""
    command = [
        sys.executable, os.path.join(ROOT, "recipes/bench_train.py"),
        "--serve", "--models=shufflenet_0.25x_g1_shallow_split",
        "--batch_size=2", "--image_size=32", "--steps=1",
    ]
    results = throughput.backend_throughput(
        ["shufflenet_0.25x_g1_shallow_split"], ["tensorflow", "torch"],
        command, rounds=2, images=2,
    )
    assert list(results) == [
        "tensorflow:shufflenet_0.25x_g1_shallow_split",
        "torch:shufflenet_0.25x_g1_shallow_split",
    ]
    for stats in results.values():
        assert stats["n"] == 2
        assert 0 < stats["p90"] <= stats["median"]
