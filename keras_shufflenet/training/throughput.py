"""Training throughput on the host CPU/GPU: ShuffleNet's pointwise group
conv lowerings against keras.applications peers, measured interleaved.
"""

import time

import keras
import numpy as np

from keras_shufflenet.models.layers import GROUP_CONV_IMPLEMENTATIONS
from keras_shufflenet.models.naming import parse_variant_name
from keras_shufflenet.models.shufflenet import ShuffleNet
from keras_shufflenet.training.fused import training_model
from keras_shufflenet.utils.timing import interleaved_schedule
from keras_shufflenet.utils.timing import timing_stats

PEERS = {
    "mobilenetv2_0.5": lambda shape: keras.applications.MobileNetV2(
        alpha=0.5, weights=None, input_shape=shape
    ),
    "mobilenet_0.5": lambda shape: keras.applications.MobileNet(
        alpha=0.5, weights=None, input_shape=shape
    ),
}


def build(name, input_shape=(224, 224, 3)):
    """Builds a benchmark model by name.

    Args:
        name: `"shufflenet_<scale>x_g<groups>_<implementation>"` (for
            example `shufflenet_1.0x_g3_split`) or a key of `PEERS`. The
            implementation is a `PointwiseGroupConv2D` lowering, or
            `"fused"`: `fused.training_model` of the split model, the
            graph `keras_shufflenet.training` trains.
        input_shape: Input shape. Defaults to (224, 224, 3).

    Returns:
        An uncompiled `keras.Model` with 1000 classes.
    """
    if name in PEERS:
        return PEERS[name](input_shape)
    try:
        variant = parse_variant_name(name, argument="names")
    except ValueError:
        variant = None
    implementations = GROUP_CONV_IMPLEMENTATIONS + ("fused",)
    if variant is None or variant["suffix"] not in implementations:
        raise ValueError(
            "A model name is 'shufflenet_<scale>x_g<groups>_<implementation>' "
            f"(implementation one of {implementations}) or one of "
            f"{sorted(PEERS)}. Received: {name!r}"
        )
    implementation = variant["suffix"]
    fuse = implementation == "fused"
    model = ShuffleNet(
        variant["scale"], variant["groups"], se=variant["se"],
        shallow=variant["shallow"], shuffle=variant["shuffle"],
        input_shape=input_shape,
        group_conv_implementation="split" if fuse else implementation,
    )
    return training_model(model) if fuse else model


def training_throughput(
    names, batch_size=32, image_size=224, rounds=5, steps=2, warmup=2,
    jit_compile=False, progress=None,
):
    """Measures training images/s of several models, interleaved.

    Each model gets SGD with momentum and sparse cross-entropy on random
    images, compiled once; a sample is `steps` `train_on_batch` calls, and
    the models take turns in every round (`benchmark.interleaved_schedule`).

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
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch_size, image_size, image_size, 3))
    x = x.astype("float32")
    y = rng.integers(0, 1000, batch_size)
    models = {}
    for name in names:
        model = build(name, (image_size, image_size, 3))
        model.compile(
            keras.optimizers.SGD(0.01, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(),
            jit_compile=jit_compile,
        )
        # Built outside the train function: without a strategy, Keras
        # creates the slots during the first trace, and tf.function then
        # traces the whole step twice (~40% of the set-up).
        model.optimizer.build(model.trainable_variables)
        for _ in range(warmup):
            model.train_on_batch(x, y)
        models[name] = model
    seconds = {name: [] for name in names}
    for round_, name in interleaved_schedule(names, rounds):
        start = time.perf_counter()
        for _ in range(steps):
            models[name].train_on_batch(x, y)
        seconds[name].append(time.perf_counter() - start)
        if progress is not None:
            progress(round_, name, batch_size * steps / seconds[name][-1])
    images = batch_size * steps
    results = {}
    for name, samples in seconds.items():
        stats = timing_stats(samples)
        results[name] = {
            "median": images / (stats["median_ms"] / 1e3),
            "p90": images / (stats["p90_ms"] / 1e3),
            "n": stats["num_runs"],
        }
    return results
