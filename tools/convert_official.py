r"""Converts an official ShuffleNet v1 PyTorch checkpoint (megvii-model/
ShuffleNet-Series) to Keras `.keras` and `.weights.h5` files.

Reads the file with the package's safe reader (no PyTorch, no code from
the file). With the default output directory, the weights cache,
`ShuffleNet(1.0, 3, weights="shufflenet_1.0x_g3.official")` then loads
them. The same works without this program: put the checkpoint into the
cache's `checkpoints/` folder, or pass its path as `weights=`.

Example:
    python tools/convert_official.py --checkpoint=1.0x.pth.tar --scale=1.0 \
        --groups=3
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from keras_shufflenet.weights import download  # noqa: E402
from keras_shufflenet.weights import official  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "checkpoint", None, "The official .pth.tar file (e.g. Group3/models/"
    "1.0x.pth.tar of the release's download folder)."
)
flags.DEFINE_float("scale", None, "Width multiplier: 0.5, 1.0, 1.5 or 2.0.")
flags.DEFINE_integer("groups", None, "Groups: 3 or 8.")
flags.DEFINE_string(
    "output_dir", None,
    "Where to write; defaults to the weights cache "
    "($KERAS_SHUFFLENET_HOME, else ~/.keras/keras_shufflenet).",
)
flags.mark_flags_as_required(["checkpoint", "scale", "groups"])


def main(argv):
    del argv
    print(f"Converting {FLAGS.checkpoint} (ShuffleNet {FLAGS.scale}x, "
          f"groups={FLAGS.groups}) ...", flush=True)
    try:
        result = official.convert_official_checkpoint(
            FLAGS.checkpoint, FLAGS.scale, FLAGS.groups,
            output_dir=FLAGS.output_dir or download.weights_home(),
        )
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"convert_official: {e}")
    print(f"sha256 of {FLAGS.checkpoint}: {result['sha256']}")
    print(f"Wrote {result['keras']}")
    print(f"Wrote {result['weights']}")


if __name__ == "__main__":
    app.run(main)
