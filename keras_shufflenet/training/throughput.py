"""Training throughput on the host CPU/GPU: ShuffleNet's pointwise group
conv lowerings against keras.applications peers, measured interleaved.
"""

import os
import subprocess
import sys
import time

import keras
import numpy as np

from keras_shufflenet.models.layers import GROUP_CONV_IMPLEMENTATIONS
from keras_shufflenet.models.naming import parse_variant_name
from keras_shufflenet.models.shufflenet import ShuffleNet
from keras_shufflenet.training.config import FREEZE_POINTS
from keras_shufflenet.training.fused import training_model
from keras_shufflenet.training.transfer import freeze
from keras_shufflenet.utils.timing import interleaved_schedule
from keras_shufflenet.utils.timing import timing_stats

TRAINING_PEERS = {
    "mobilenetv2_0.5": lambda shape: keras.applications.MobileNetV2(
        alpha=0.5, weights=None, input_shape=shape
    ),
    "mobilenet_0.5": lambda shape: keras.applications.MobileNet(
        alpha=0.5, weights=None, input_shape=shape
    ),
}


def build_bench_model(name, input_shape=(224, 224, 3)):
    """Builds a benchmark model by name.

    Args:
        name: `"shufflenet_<scale>x_g<groups>_<implementation>"` (for
            example `shufflenet_1.0x_g3_split`) or a key of
            `TRAINING_PEERS`. The implementation is a
            `PointwiseGroupConv2D` lowering, or `"fused"`:
            `fused.training_model` of the split model, the graph
            `keras_shufflenet.training` trains. A last word
            `frozen<point>` (`frozenstage3`) freezes the stem and stages up
            to that point, as a fine-tune does (`transfer.freeze`).
        input_shape: Input shape. Defaults to (224, 224, 3).

    Returns:
        An uncompiled `keras.Model` with 1000 classes.
    """
    if name in TRAINING_PEERS:
        return TRAINING_PEERS[name](input_shape)
    try:
        variant = parse_variant_name(name, argument="names")
    except ValueError:
        variant = None
    implementations = GROUP_CONV_IMPLEMENTATIONS + ("fused",)
    implementation, _, frozen = (variant or {}).get("suffix", "").partition(
        "_frozen"
    )
    if (
        variant is None
        or implementation not in implementations
        or frozen and frozen not in FREEZE_POINTS
    ):
        raise ValueError(
            "A model name is 'shufflenet_<scale>x_g<groups>_<implementation>"
            f"[_frozen<point>]' (implementation one of {implementations}, "
            f"point one of {FREEZE_POINTS}) or one of "
            f"{sorted(TRAINING_PEERS)}. Received: {name!r}"
        )
    fuse = implementation == "fused"
    model = ShuffleNet(
        variant["scale"], variant["groups"], se=variant["se"],
        shallow=variant["shallow"], shuffle=variant["shuffle"],
        input_shape=input_shape,
        group_conv_implementation="split" if fuse else implementation,
    )
    if frozen:
        freeze(model, frozen)
    return training_model(model) if fuse else model


class TrainingBench:
    """Models compiled and warmed up for timing, one sample at a time.

    Each model gets SGD with momentum and sparse cross-entropy on random
    images, compiled once; a sample is `steps` `train_on_batch` calls.

    Args:
        names: Model names (see `build`).
        batch_size: Images per step. Defaults to 32.
        image_size: Square input size. Defaults to 224.
        steps: Training steps per sample. Defaults to 2.
        warmup: Untimed steps per model first (tracing). Defaults to 2.
        jit_compile: True compiles the train step with XLA; False leaves
            it to Keras (`"auto"`): no XLA on TensorFlow's CPU, while on
            JAX a step is always one jitted function (without it, JAX
            would run op by op).
    """

    def __init__(
        self, names, batch_size=32, image_size=224, steps=2, warmup=2,
        jit_compile=False,
    ):
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (batch_size, image_size, image_size, 3))
        self.x = x.astype("float32")
        self.y = rng.integers(0, 1000, batch_size)
        self.images = batch_size * steps
        self.steps = steps
        self.models = {}
        for name in names:
            model = build_bench_model(name, (image_size, image_size, 3))
            model.compile(
                keras.optimizers.SGD(0.01, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(),
                jit_compile=jit_compile or "auto",
            )
            # Built outside the train function: without a strategy, Keras
            # creates the slots during the first trace, and tf.function
            # then traces the whole step twice.
            model.optimizer.build(model.trainable_variables)
            for _ in range(warmup):
                model.train_on_batch(self.x, self.y)
            self.models[name] = model

    def sample(self, name):
        """Seconds for `steps` training steps of model `name`."""
        start = time.perf_counter()
        for _ in range(self.steps):
            self.models[name].train_on_batch(self.x, self.y)
        return time.perf_counter() - start


def images_per_second(seconds, images):
    """`{name: {"median", "p90", "n"}}` in images/s from sample times."""
    results = {}
    for name, samples in seconds.items():
        stats = timing_stats(samples)
        results[name] = {
            "median": images / (stats["median_ms"] / 1e3),
            "p90": images / (stats["p90_ms"] / 1e3),
            "n": stats["num_runs"],
        }
    return results


def training_throughput(
    names, batch_size=32, image_size=224, rounds=5, steps=2, warmup=2,
    jit_compile=False, progress=None,
):
    """Measures training images/s of several models, interleaved.

    The models (a `TrainingBench`) take turns in every round
    (`timing.interleaved_schedule`).

    Args:
        names: Model names (see `build`).
        batch_size: Images per step. Defaults to 32.
        image_size: Square input size. Defaults to 224.
        rounds: Interleaved rounds. Defaults to 5.
        steps: Training steps per sample. Defaults to 2.
        warmup: Untimed steps per model first (tracing). Defaults to 2.
        jit_compile: Whether to compile the train step with XLA.
        progress: Optional callable given `(round, name, images_per_s)`.

    Returns:
        A dict of name to `{"median": images/s at the median sample time,
        "p90": images/s at the 90th percentile (slow) time, "n": samples}`.
    """
    bench = TrainingBench(
        names, batch_size, image_size, steps, warmup, jit_compile
    )
    seconds = {name: [] for name in names}
    for round_, name in interleaved_schedule(names, rounds):
        seconds[name].append(bench.sample(name))
        if progress is not None:
            progress(round_, name, bench.images / seconds[name][-1])
    return images_per_second(seconds, bench.images)


def serve(names, out=None, **kwargs):
    """Times samples on request: the worker of `backend_throughput`.

    Builds a `TrainingBench` of `names` (under this process's Keras
    backend), prints `ready`, then reads model names from stdin, one per
    line, and answers each with one sample's seconds.

    Args:
        names: Model names (see `build`).
        out: Where the answers go. Defaults to `sys.stdout`.
        **kwargs: `TrainingBench` arguments.
    """
    out = out or sys.stdout
    bench = TrainingBench(names, **kwargs)
    print("ready", file=out, flush=True)
    for line in sys.stdin:
        print(f"{bench.sample(line.strip()):.9f}", file=out, flush=True)


def backend_throughput(
    names, backends, command, rounds=5, images=64, progress=None,
):
    """Training images/s of models on several Keras backends, interleaved.

    One worker process per backend (`command` with `KERAS_BACKEND` set,
    running `serve`) compiles and warms up its models; then every round
    asks each (backend, model) pair for one sample in turn, so only one
    worker computes at a time and all of them see the same machine.

    Args:
        names: Model names (see `build`), timed on every backend.
        backends: Keras backends, e.g. `["tensorflow", "jax"]`.
        command: The worker's command line (a list) that calls `serve`.
        rounds: Interleaved rounds. Defaults to 5.
        images: Images per sample (batch size times steps), for the rates.
        progress: Optional callable given `(round, key, images_per_s)`.

    Returns:
        A dict of `"<backend>:<name>"` to `{"median", "p90", "n"}`.
    """
    workers = {}
    for backend in backends:
        workers[backend] = subprocess.Popen(
            command,
            env=dict(os.environ, KERAS_BACKEND=backend),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    try:
        for backend, worker in workers.items():
            # The set-up's output goes to stderr; stdout says when ready.
            line = worker.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(
                    f"The {backend} worker did not start (exit "
                    f"{worker.wait()}); see its output above."
                )
        keys = [f"{b}:{n}" for b in backends for n in names]
        seconds = {key: [] for key in keys}
        for round_, key in interleaved_schedule(keys, rounds):
            backend, name = key.split(":", 1)
            workers[backend].stdin.write(name + "\n")
            workers[backend].stdin.flush()
            seconds[key].append(float(workers[backend].stdout.readline()))
            if progress is not None:
                progress(round_, key, images / seconds[key][-1])
    finally:
        for worker in workers.values():
            worker.stdin.close()
            worker.wait()
    return images_per_second(seconds, images)
