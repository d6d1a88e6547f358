"""`train.deterministic`: TensorFlow's op determinism, and the oneDNN
kernels it does not cover.

`tf.config.experimental.enable_op_determinism` makes TensorFlow's own
kernels deterministic. Its oneDNN kernels, which TensorFlow turns on by
itself on CPUs with AVX-512 VNNI and newer, are outside it: a
convolution's weight gradient sums over the batch in as many parts as
oneDNN is given threads, and TensorFlow gives it one thread when the op
happens to start on a thread of its intra-op pool and the whole pool
otherwise. Which of the two happens depends on scheduling, so the last
bits of a gradient do too (the stem's kernel gradient differs in the last
bit between one and two threads), and a resumed run can end a few ulps
away from an uninterrupted one. With oneDNN off, TensorFlow's CPU kernels
split their sums by the size of the intra-op pool, the same for every
call, so a restart on the same machine with the same thread settings
repeats them bit for bit.
"""

import os

import keras
import tensorflow as tf

from keras_shufflenet.utils.cli import rerun_with_env
from keras_shufflenet.utils.onednn import cpu_runs_onednn

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def enable_determinism(strategy=None):
    """Turns TensorFlow's op determinism on, or refuses where it cannot hold.

    Args:
        strategy: The `tf.distribute.Strategy` that trains. When all its
            devices are CPUs and TensorFlow runs oneDNN kernels there,
            this raises; None (the model's math is not TensorFlow's, as on
            JAX) skips the check.

    Raises:
        ValueError: oneDNN is on where the model trains. It is decided
            when TensorFlow is imported, so the process cannot turn it off.
    """
    on_cpu = strategy is not None and all(
        "CPU" in device.upper() for device in strategy.extended.worker_devices
    )
    if on_cpu and cpu_runs_onednn():
        setting = os.environ.get(ONEDNN_VARIABLE)
        chosen = (
            f"{ONEDNN_VARIABLE}={setting}" if setting is not None
            else f"{ONEDNN_VARIABLE} is unset and TensorFlow chose it for "
            "this CPU"
        )
        raise ValueError(
            "train.deterministic=True asks for bit-identical weights after "
            "a restart, but TensorFlow runs its oneDNN kernels on this CPU "
            f"({chosen}), whose gradient sums depend on the thread that "
            f"runs them. Set {ONEDNN_VARIABLE}=0 before TensorFlow is "
            "imported (recipes/train.py does it by itself), or train with "
            "train.deterministic=False."
        )
    tf.config.experimental.enable_op_determinism()


def rerun_without_onednn(config):
    """Runs this program again with oneDNN off if `config` asks for
    determinism and the environment leaves oneDNN to TensorFlow.

    For programs that know the config only after TensorFlow is imported:
    recipes/train.py reads `--train.deterministic` itself before the
    import, and calls this for recipe files that set it. It does not ask
    TensorFlow whether oneDNN is on, which would start its runtime before
    a multi-worker strategy can configure it, so it runs again on every
    CPU where `TF_ENABLE_ONEDNN_OPTS` is unset, under Keras' TensorFlow
    backend. An explicit setting is kept; `enable_determinism` refuses
    `TF_ENABLE_ONEDNN_OPTS=1`.

    Args:
        config: The run's `ExperimentConfig`.
    """
    if not config.train.deterministic or ONEDNN_VARIABLE in os.environ:
        return
    if keras.backend.backend() != "tensorflow":
        return  # XLA computes the model; TensorFlow only reads the data.
    rerun_with_env(
        "train.deterministic=true: running again with "
        f"{ONEDNN_VARIABLE}=0, since TensorFlow's oneDNN kernels (on by "
        "default on some CPUs) sum gradients in an order that depends on "
        "the thread that runs them.",
        **{ONEDNN_VARIABLE: "0"},
    )
