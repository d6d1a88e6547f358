"""keras_shufflenet: ShuffleNet v1 (Zhang et al., 2017) for Keras 3."""

from keras_shufflenet import data
from keras_shufflenet import deploy
from keras_shufflenet import export
from keras_shufflenet import fused
from keras_shufflenet import pretrained
from keras_shufflenet.complexity import complexity
from keras_shufflenet.complexity import layer_flops
from keras_shufflenet.fused import training_model
from keras_shufflenet.layers import ChannelShuffle
from keras_shufflenet.layers import PointwiseGroupConv2D
from keras_shufflenet.layers import set_group_conv_implementation
from keras_shufflenet.layers import shuffle_permutation
from keras_shufflenet.official import from_official_checkpoint
from keras_shufflenet.shufflenet import OFFICIAL_WIDTHS
from keras_shufflenet.shufflenet import ShuffleNet
from keras_shufflenet.shufflenet import feature_extractor
from keras_shufflenet.shufflenet import load_weights
from keras_shufflenet.shufflenet import preprocess_input
from keras_shufflenet.shufflenet import shufflenet_widths

__version__ = "0.1.0"
