"""keras_shufflenet: ShuffleNet v1 (Zhang et al., 2017) for Keras 3.

The package is the pipeline, one subpackage per stage; each imports only
the stages above it:

- `models`: the network (Table 1), its layers, complexity, named weights.
- `data`: sources, the paper's preprocessing, the `tf.data` pipeline.
- `training`: configs, the training loop, evaluation, the fast graph.
- `lite`: deployment rewrites, TFLite conversion, evaluation, latency.
- `weights`: the official release's checkpoints, converted.
"""

import importlib
import warnings

from keras_shufflenet import data
from keras_shufflenet import lite
from keras_shufflenet import models
from keras_shufflenet import training
from keras_shufflenet import weights
from keras_shufflenet.models import pretrained
from keras_shufflenet.models.complexity import complexity
from keras_shufflenet.models.complexity import layer_flops
from keras_shufflenet.models.layers import ChannelShuffle
from keras_shufflenet.models.layers import PointwiseGroupConv2D
from keras_shufflenet.models.layers import set_group_conv_implementation
from keras_shufflenet.models.layers import shuffle_permutation
from keras_shufflenet.models.loading import load_weights
from keras_shufflenet.models.lowering import DeferredChannelShuffle
from keras_shufflenet.models.lowering import DepthwiseAveragePooling2D
from keras_shufflenet.models.lowering import ImageNormalization
from keras_shufflenet.models.lowering import PermutedDepthwiseConv2D
from keras_shufflenet.models.lowering import RowZeroPadding2D
from keras_shufflenet.models.lowering import ShufflingBatchNormalization
from keras_shufflenet.models.shufflenet import OFFICIAL_WIDTHS
from keras_shufflenet.models.shufflenet import ShuffleNet
from keras_shufflenet.models.shufflenet import feature_extractor
from keras_shufflenet.models.shufflenet import preprocess_input
from keras_shufflenet.models.shufflenet import shufflenet_widths
from keras_shufflenet.training.fused import training_model
from keras_shufflenet.version import __version__
from keras_shufflenet.weights.official import from_official_checkpoint

# The flat modules of 0.1.0 and where their contents live now.
_MOVED = {
    "shufflenet": "keras_shufflenet.models.shufflenet",
    "layers": "keras_shufflenet.models.layers",
    "complexity": "keras_shufflenet.models.complexity",
    "deploy": "keras_shufflenet.lite.rewrite",
    "export": "keras_shufflenet.lite",
    "benchmark": "keras_shufflenet.lite.benchmark",
    "fused": "keras_shufflenet.training.fused",
    "train_speed": "keras_shufflenet.training.throughput",
    "official": "keras_shufflenet.weights.official",
    "files": "keras_shufflenet.utils.files",
}


def __getattr__(name):
    if name in _MOVED:
        warnings.warn(
            f"`keras_shufflenet.{name}` moved to `{_MOVED[name]}`; the old "
            "name will be removed in a future release.",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(_MOVED[name])
    raise AttributeError(f"module 'keras_shufflenet' has no attribute {name!r}")
