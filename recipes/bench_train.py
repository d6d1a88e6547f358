"""Training throughput of ShuffleNet's group-conv lowerings vs MobileNetV2.

    python recipes/bench_train.py            # 1x g3: fused/split/grouped/dense
    python recipes/bench_train.py --models=shufflenet_0.5x_g8_split

Goal (issue 2): ShuffleNet 1x g3 trains on CPU at >= 1.25x the throughput
of keras.applications MobileNetV2 0.5. Prints medians and ratios.
`_fused` is `keras_shufflenet.training_model` of the split model, the graph
the training recipes step (same weights, same function).
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from keras_shufflenet.training.throughput import training_throughput  # noqa: E402

_MODELS = flags.DEFINE_list(
    "models",
    ["shufflenet_1.0x_g3_fused", "shufflenet_1.0x_g3_split",
     "shufflenet_1.0x_g3_grouped",
     "shufflenet_1.0x_g3_dense", "mobilenetv2_0.5"],
    "Models to compare; the last is the baseline of the ratios.",
)
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per step.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Square input size.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
_STEPS = flags.DEFINE_integer("steps", 2, "Training steps per sample.")
_JIT = flags.DEFINE_bool("jit_compile", False, "Compile steps with XLA.")
_JSON = flags.DEFINE_string("json", None, "Also write results here.")


def main(argv):
    del argv
    results = training_throughput(
        _MODELS.value, batch_size=_BATCH.value, image_size=_SIZE.value,
        rounds=_ROUNDS.value, steps=_STEPS.value, jit_compile=_JIT.value,
        progress=lambda r, name, rate: print(
            f"  round {r + 1}: {name} {rate:.1f} img/s", flush=True),
    )
    baseline = _MODELS.value[-1]
    base = results[baseline]["median"]
    print(f"\n| model | median img/s | p90 (slow) img/s | vs {baseline} |")
    print("|---|---:|---:|---:|")
    for name, stats in results.items():
        print(f"| {name} | {stats['median']:.1f} | {stats['p90']:.1f} | "
              f"{stats['median'] / base:.2f}x |")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
