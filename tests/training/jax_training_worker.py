"""Runs the training recipe on JAX over two simulated CPU devices and
writes what tests/training/test_jax_training.py checks, as JSON.

    KERAS_BACKEND=jax \
    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
    python tests/training/jax_training_worker.py OUT_DIR

Runs, all from the same seed, data and pretrained weights (a 1000-class
`.weights.h5` this worker writes; the classifier starts fresh for the 10
digits, and the stem and stage 2 are frozen):
    two_devices: 6 steps, BN re-estimation, export.
    one_device: its first 3 steps on one device.
    resumed: the same on two devices, stopped by SIGTERM after step 5 and
        run again, after its newest checkpoint was damaged once.
"""

import json
import os
import shutil
import signal
import sys
import time

import jax
import keras
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, ROOT)

import keras_shufflenet as ks  # noqa: E402
from keras_shufflenet import data  # noqa: E402
from keras_shufflenet import training  # noqa: E402
from keras_shufflenet.training import backends  # noqa: E402
from keras_shufflenet.training import preemption  # noqa: E402
from keras_shufflenet.training.jax_training import OrbaxCheckpoints  # noqa: E402


def config(model_dir, strategy, weights):
    train = dict(
        batch_size=16,
        steps=6,
        eval_batch_size=120,
        bn_recalibration_epochs=0.04,
        steps_per_execution=2,
        checkpoint_every_steps=3,
        log_every_steps=3,
    )
    return training.ExperimentConfig(
        model_dir=model_dir,
        strategy=strategy,
        export=False,
        model=training.ModelConfig(
            scale=0.25, groups=3, shallow=True, fused_training=False,
            weights=weights, freeze="stage2",
        ),
        # Small steps: a fresh net's first steps are chaotic, and the runs
        # on one and two devices (sums in another order) must stay close.
        optimizer=training.OptimizerConfig(lr=0.05, warmup_epochs=0.0),
        train=training.TrainConfig(**train),
        data=data.InputConfig(source="digits", image_size=32),
    )


def save_weights(model, path):
    """Every variable by path, to `path` (.npz)."""
    np.savez(path, **{v.path: np.asarray(v.value) for v in model.variables})
    return path


def replicas_agree(variables):
    """Whether every device holds the same copy of every variable."""
    for v in variables:
        shards = [np.asarray(s.data) for s in v.value.addressable_shards]
        if len(shards) != 2 or any(
            not np.array_equal(shards[0], s) for s in shards[1:]
        ):
            return False
    return True


class StopAfter:
    """Sends this process SIGTERM once training has passed `step`, as a
    scheduler preempting the job would."""

    def __init__(self, trainer, step):
        self.trainer = trainer
        self.inner = trainer.train_step
        self.step = step

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, iterator, num_steps):
        totals = self.inner(iterator, num_steps)
        if self.trainer.step >= self.step:
            os.kill(os.getpid(), signal.SIGTERM)
        return totals


def pretrained(out):
    """A 1000-class model's weights, batch norm statistics not trivial."""
    model = ks.ShuffleNet(
        0.25, 3, shallow=True, input_shape=(32, 32, 3), classes=1000
    )
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                               for w in layer.get_weights()])
    path = os.path.join(out, "pretrained.weights.h5")
    model.save_weights(path)
    return path, {layer.name: [np.copy(w) for w in layer.get_weights()]
                  for layer in model.layers}


def frozen_unchanged(trainer, before):
    """Whether every frozen layer holds its pretrained values."""
    layers = [trainer.model.get_layer(name) for name in trainer.frozen]
    return bool(layers) and all(
        np.array_equal(a, b)
        for layer in layers
        for a, b in zip(layer.get_weights(), before[layer.name])
    )


def main(out):
    report = {"devices": len(jax.devices()), "seconds": {}}
    start = time.perf_counter()

    def mark(name):
        report["seconds"][name] = round(time.perf_counter() - start, 1)

    trainer_class = backends.trainer_class()
    report["trainer"] = trainer_class.__name__
    weights, before = pretrained(out)

    trainer = trainer_class(config(os.path.join(out, "two"), "mirrored", weights))
    lines = []
    trainer.log.say = lines.append
    mark("built two")
    result = trainer.fit()
    mark("trained two")
    report["two_devices"] = {
        "metrics": result.metrics,
        "replicas": trainer.num_replicas,
        "replicas_agree": replicas_agree(
            trainer.model.variables + trainer.optimizer.variables
        ),
        "weights": save_weights(trainer.model, os.path.join(out, "two.npz")),
        "checkpoints": trainer.checkpoints.saved(),
        "recalibrated_at": int(trainer.recalibrated_at.numpy()),
        "initialised": [x for x in lines if x.startswith("Initialised")],
        "frozen": len(trainer.frozen),
        "frozen_unchanged": frozen_unchanged(trainer, before),
    }

    # Three steps on one device, against the two devices' checkpoint of
    # step 3 read into the same model (no evaluation: it would compile).
    one = trainer_class(config(os.path.join(out, "one"), "one_device", weights))
    mark("built one")
    one._initialize_from_weights()
    one.train_step(one._training_iterator(), 3)
    report["one_device"] = {
        "replicas": one.num_replicas,
        "step": one.step,
        "weights": save_weights(one.model, os.path.join(out, "one.npz")),
    }
    # A run directory holding only that checkpoint.
    at_3 = os.path.join(out, "two_at_3")
    shutil.copytree(
        os.path.join(out, "two", "checkpoints", "ckpt_3"),
        os.path.join(at_3, "checkpoints", "ckpt_3"),
    )
    restored = OrbaxCheckpoints(at_3, True, 3, **one.checkpointed()).restore()
    report["two_devices_step_3"] = {
        "restored": restored,
        "step": one.step,
        "weights": save_weights(one.model, os.path.join(out, "two_3.npz")),
    }
    mark("trained one")

    resumed = os.path.join(out, "resumed")
    trainer = trainer_class(config(resumed, "mirrored", weights))
    trainer.train_step = StopAfter(trainer, 5)
    try:
        trainer.fit()
        report["preempted"] = None
    except preemption.Preempted as stopped:
        report["preempted"] = {"checkpoint": stopped.checkpoint,
                               "step": trainer.step}
    trainer.checkpoints.close()
    mark("preempted")
    # A checkpoint cut short: a file of the newest one gone.
    newest = trainer.checkpoints.latest()
    report["damaged"] = newest
    for name in sorted(os.listdir(os.path.join(newest, "state"))):
        if name.startswith("manifest"):
            os.remove(os.path.join(newest, "state", name))
    trainer = trainer_class(config(resumed, "mirrored", weights))
    lines = []
    trainer.log.say = lines.append
    trainer.fit()
    mark("resumed")
    report["resumed"] = {
        "lines": lines,
        "weights": save_weights(trainer.model, os.path.join(out, "resumed.npz")),
        "history_steps": [h["step"] for h in trainer.history],
        "events": sorted(os.listdir(os.path.join(resumed, "tensorboard"))),
    }
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    keras.config.disable_interactive_logging()
    # The runs on two devices compile the same steps: compile them once.
    jax.config.update(
        "jax_compilation_cache_dir", os.path.join(sys.argv[1], "xla_cache")
    )
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    main(sys.argv[1])
