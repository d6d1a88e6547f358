"""Training throughput of ShuffleNet's group-conv lowerings vs MobileNetV2,
on one Keras backend or several, interleaved.

    python recipes/bench_train.py            # 1x g3: fused/split/grouped/dense
    python recipes/bench_train.py --models=shufflenet_0.5x_g8_split
    # TensorFlow against JAX: one worker process per backend, taking turns
    python recipes/bench_train.py --backends=tensorflow,jax \\
        --models=shufflenet_1.0x_g3_fused,shufflenet_1.0x_g3_split,mobilenetv2_0.5

Goal (issue 2): ShuffleNet 1x g3 trains on CPU at >= 1.25x the throughput
of keras.applications MobileNetV2 0.5. Prints medians and ratios.
`_fused` is `keras_shufflenet.training_model` of the split model, the graph
the training recipes step (same weights, same function). With
`--backends`, every model runs on every backend; each backend's models are
compiled in their own worker process, and the rounds then ask one
(backend, model) pair at a time for a sample, so that only one process
computes at any moment.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_shufflenet.training import throughput  # noqa: E402

_MODELS = flags.DEFINE_list(
    "models",
    ["shufflenet_1.0x_g3_fused", "shufflenet_1.0x_g3_split",
     "shufflenet_1.0x_g3_grouped",
     "shufflenet_1.0x_g3_dense", "mobilenetv2_0.5"],
    "Models to compare; the last is the baseline of the ratios.",
)
_BACKENDS = flags.DEFINE_list(
    "backends", [],
    "Keras backends to compare (tensorflow, jax, torch), one worker process "
    "each. Empty: this process's backend (KERAS_BACKEND) only.",
)
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per step.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Square input size.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
_STEPS = flags.DEFINE_integer("steps", 2, "Training steps per sample.")
_JIT = flags.DEFINE_bool(
    "jit_compile", False,
    "Compile TensorFlow's steps with XLA (JAX's always are).",
)
_JSON = flags.DEFINE_string("json", None, "Also write results here.")
_SERVE = flags.DEFINE_bool(
    "serve", False, "Internal: be one backend's worker of --backends."
)


def print_table(results, baseline):
    """One Markdown table: each row's ratio to the baseline model on its
    own backend and on the backend where the baseline is fastest."""
    def backend(key):
        return key.split(":", 1)[0] if ":" in key else ""

    bases = {
        backend(key): stats["median"]
        for key, stats in results.items()
        if key.split(":")[-1] == baseline
    }
    best = max(bases.values())
    print(f"\n| model | median img/s | p90 (slow) img/s | vs {baseline} "
          f"(same backend) | vs {baseline} (its best backend) |")
    print("|---|---:|---:|---:|---:|")
    for key, stats in results.items():
        median = stats["median"]
        print(f"| {key} | {median:.1f} | {stats['p90']:.1f} | "
              f"{median / bases[backend(key)]:.2f}x | {median / best:.2f}x |")


def main(argv):
    del argv
    bench_args = dict(
        batch_size=_BATCH.value, image_size=_SIZE.value, steps=_STEPS.value,
        jit_compile=_JIT.value,
    )
    if _SERVE.value:
        # The set-up's chatter goes to stderr; stdout carries the samples.
        stdout, sys.stdout = sys.stdout, sys.stderr
        throughput.serve(_MODELS.value, out=stdout, **bench_args)
        return

    def progress(r, name, rate):
        print(f"  round {r + 1}: {name} {rate:.1f} img/s", flush=True)

    if _BACKENDS.value:
        command = [
            sys.executable, os.path.abspath(__file__), "--serve",
            f"--models={','.join(_MODELS.value)}",
            f"--batch_size={_BATCH.value}", f"--image_size={_SIZE.value}",
            f"--steps={_STEPS.value}", f"--jit_compile={_JIT.value}",
        ]
        results = throughput.backend_throughput(
            _MODELS.value, _BACKENDS.value, command, rounds=_ROUNDS.value,
            images=_BATCH.value * _STEPS.value, progress=progress,
        )
    else:
        results = throughput.training_throughput(
            _MODELS.value, rounds=_ROUNDS.value, progress=progress,
            **bench_args,
        )
    print_table(results, _MODELS.value[-1])
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
