"""keras_shufflenet: ShuffleNet v1 (Zhang et al., 2017) for Keras 3.

The package is the pipeline, one subpackage per stage; each imports only
the stages above it:

- `models`: the network (Table 1), its layers, complexity, named weights.
- `data`: sources, the paper's preprocessing, the `tf.data` pipeline.
- `training`: configs, the training loop, evaluation, the fast graph.
- `lite`: the on-device graph, TFLite conversion, evaluation, latency.
- `weights`: checkpoints of other implementations, converted.
- `qat`: quantization-aware training (the `[qat]` extra; import it).

Here are the names a user calls most: the model and its layers, its
complexity, pretrained weights, the TFLite conversion and the training
entry points. Everything else lives in the stages.
"""

from keras_shufflenet import data
from keras_shufflenet import lite
from keras_shufflenet import models
from keras_shufflenet import training
from keras_shufflenet import weights
from keras_shufflenet.lite.conversion import convert
from keras_shufflenet.models.complexity import complexity
from keras_shufflenet.models.layers import ChannelShuffle
from keras_shufflenet.models.layers import PointwiseGroupConv2D
from keras_shufflenet.models.parts import network_parts
from keras_shufflenet.models.shufflenet import ShuffleNet
from keras_shufflenet.models.shufflenet import feature_extractor
from keras_shufflenet.models.shufflenet import preprocess_input
from keras_shufflenet.models.shufflenet import shufflenet_widths
from keras_shufflenet.training.backends import train
from keras_shufflenet.training.fused import training_model
from keras_shufflenet.version import __version__
from keras_shufflenet.weights.official import from_official_checkpoint

__all__ = [
    "ChannelShuffle",
    "PointwiseGroupConv2D",
    "ShuffleNet",
    "complexity",
    "convert",
    "data",
    "feature_extractor",
    "from_official_checkpoint",
    "lite",
    "models",
    "network_parts",
    "preprocess_input",
    "shufflenet_widths",
    "train",
    "training",
    "training_model",
    "weights",
]
