"""The training recipe on JAX with `keras.distribution.DataParallel` over
two simulated CPU devices: replicas in sync, the same training as on one
device, checkpoints that survive damage and resume exactly.

One module fixture runs `jax_training_worker.py` in a fresh process
(the backend and the device count are fixed at start-up).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_shufflenet.training import backends

WORKER = os.path.join(os.path.dirname(__file__), "jax_training_worker.py")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("jax_training")
    xla = os.environ.get("XLA_FLAGS", "")
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS=f"{xla} --xla_force_host_platform_device_count=2".strip(),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    done = subprocess.run(
        [sys.executable, WORKER, str(out)],
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    with open(out / "report.json") as f:
        return json.load(f)


def weights(run):
    with np.load(run["weights"]) as saved:
        return dict(saved)


pytestmark = [pytest.mark.long, pytest.mark.xdist_group("jax_training")]


def test_jax_backend_gets_the_jax_trainer_over_both_devices(report):
    assert report["trainer"] == "JaxTrainer"
    assert report["devices"] == 2
    assert report["two_devices"]["replicas"] == 2
    assert report["one_device"]["replicas"] == 1


def test_replicas_hold_identical_weights_after_training(report):
    assert report["two_devices"]["replicas_agree"] is True


def test_two_devices_train_as_one_device_on_the_global_batch(report):
    """Three steps on one device against the two devices' step-3
    checkpoint: DataParallel computes the global batch's gradient."""
    one, two = report["one_device"], report["two_devices_step_3"]
    assert one["step"] == 3
    assert two["restored"].endswith("ckpt_3") and two["step"] == 3
    one, two = weights(one), weights(two)
    assert two.keys() == one.keys()
    worst = max(
        float(np.max(np.abs(two[k] - one[k])) / max(np.max(np.abs(one[k])), 1))
        for k in one
    )
    # Float32 sums in another order; a wrong gradient reduction (a mean
    # of the devices' half-batch means with weight decay counted twice,
    # say) is orders of magnitude off.
    assert worst < 1e-5


def test_a_run_ends_with_evaluated_recalibrated_checkpoints(report):
    run = report["two_devices"]
    assert run["metrics"]["examples"] == 360
    assert 0.0 <= run["metrics"]["top1"] <= 1.0
    assert run["recalibrated_at"] == 6
    assert [os.path.basename(p) for p in run["checkpoints"]] == [
        "ckpt_3", "ckpt_6"
    ]


def test_a_finetune_starts_from_the_weights_and_keeps_frozen_layers(report):
    run = report["two_devices"]
    (line,) = run["initialised"]
    assert "starting fresh: predictions (10 classes)" in line
    assert "frozen up to stage2" in line
    # Their weights and batch norm statistics, after training and BN
    # re-estimation.
    assert run["frozen"] > 10 and run["frozen_unchanged"] is True


def test_sigterm_saves_a_checkpoint_and_stops(report):
    assert report["preempted"]["step"] == 5
    assert report["preempted"]["checkpoint"].endswith("ckpt_5")


def test_a_damaged_checkpoint_is_set_aside_and_the_one_before_resumed(report):
    lines = report["resumed"]["lines"]
    assert "ckpt_5 cannot be restored" in lines[0]
    assert "unusable" in lines[0]
    assert lines[1].startswith("Resumed from ")
    assert "ckpt_3 at step 3 of 6" in lines[1]
    assert "reading on from example 48 of epoch 0" in lines[1]


def test_a_resumed_run_ends_with_the_uninterrupted_runs_weights(report):
    resumed, whole = weights(report["resumed"]), weights(report["two_devices"])
    assert resumed.keys() == whole.keys()
    for name in whole:
        np.testing.assert_array_equal(resumed[name], whole[name], err_msg=name)


def test_a_resumed_run_writes_tensorboard_events_and_history(report):
    assert report["resumed"]["events"]
    assert all(
        e.startswith("events.out.tfevents") for e in report["resumed"]["events"]
    )
    assert report["resumed"]["history_steps"] == [6, 6]


def test_torch_backend_is_refused_with_what_to_do_instead():
    with pytest.raises(ValueError, match="tensorflow or jax.*model.fit"):
        backends.trainer_class("torch")


def test_jax_without_the_extra_says_what_to_install(monkeypatch):
    monkeypatch.delitem(
        sys.modules, "keras_shufflenet.training.jax_training", raising=False
    )
    for name in ("jax", "orbax.checkpoint"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[jax\]"'):
        backends.trainer_class("jax")
