"""Prints the paper-style complexity table of every ShuffleNet variant.

    python recipes/complexity_table.py [--scales=0.5,1] [--groups=3,8]

Reference: Tables 1, 2 and 5 (MFLOPs) and the official release's
parameter counts, printed beside our measurements.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from keras_shufflenet.models.complexity import complexity_table  # noqa: E402
from keras_shufflenet.models.complexity import format_table  # noqa: E402

_SCALES = flags.DEFINE_list(
    "scales", ["0.25", "0.5", "1.0", "1.5", "2.0"], "Width multipliers."
)
_GROUPS = flags.DEFINE_list("groups", ["1", "2", "3", "4", "8"], "Groups.")
_INPUT_SIZE = flags.DEFINE_integer("input_size", 224, "Square input size.")
_CSV = flags.DEFINE_string("csv", None, "Also write the rows to this CSV.")


def main(argv):
    del argv
    rows = complexity_table(
        scales=[float(s) for s in _SCALES.value],
        groups=[int(g) for g in _GROUPS.value],
        input_size=_INPUT_SIZE.value,
        progress=lambda r: print(
            f"  measured {r['scale']:g}x g{r['groups']}"
            + " se" * r["se"] + " shallow" * r["shallow"]
            + f": {r['mflops']:.1f} MFLOPs", flush=True),
    )
    print()
    print(format_table(rows))
    if _CSV.value:
        import csv

        with open(_CSV.value, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"\nWrote {_CSV.value}")


if __name__ == "__main__":
    app.run(main)
