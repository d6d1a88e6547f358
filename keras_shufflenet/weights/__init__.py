"""Weights from elsewhere: the official release's PyTorch checkpoints,
read, checked and mapped onto `keras_shufflenet.ShuffleNet`. The registry
of named weights lives in `models.pretrained`, which `ShuffleNet` reads.
"""

from keras_shufflenet.weights.official import BN_TENSORS
from keras_shufflenet.weights.official import CLASSIFIER
from keras_shufflenet.weights.official import CONV_AXES
from keras_shufflenet.weights.official import DATA_PARALLEL_PREFIX
from keras_shufflenet.weights.official import DENSE_AXES
from keras_shufflenet.weights.official import DEPTHWISE_AXES
from keras_shufflenet.weights.official import IGNORED_SUFFIX
from keras_shufflenet.weights.official import PASSTHROUGH_KWARGS
from keras_shufflenet.weights.official import assign_official_weights
from keras_shufflenet.weights.official import convert_official_checkpoint
from keras_shufflenet.weights.official import file_sha256
from keras_shufflenet.weights.official import from_official_checkpoint
from keras_shufflenet.weights.official import infer_official_config
from keras_shufflenet.weights.official import load_official_state_dict
from keras_shufflenet.weights.official import official_tensor_map
