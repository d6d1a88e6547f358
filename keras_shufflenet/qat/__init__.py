"""The quantization-aware training stage: a trained ShuffleNet's `tf_keras`
twin, tensorflow-model-optimization's 8-bit QAT on it, fine-tuning with the
training recipe, and conversion to a full-int8 TFLite model. Needs the
`[qat]` extra (tf_keras and tensorflow-model-optimization); imports
`models`, `training` and `lite`.
"""

from keras_shufflenet.qat.biases import snap_biases
from keras_shufflenet.qat.conversion import PIXEL_RANGE
from keras_shufflenet.qat.conversion import QAT_INPUT_TYPES
from keras_shufflenet.qat.conversion import QAT_OUTPUT_TYPES
from keras_shufflenet.qat.conversion import calibrate_ranges
from keras_shufflenet.qat.conversion import calibrated_qat_model
from keras_shufflenet.qat.conversion import convert_qat
from keras_shufflenet.qat.conversion import pin_input_range
from keras_shufflenet.qat.conversion import qat_model
from keras_shufflenet.qat.conversion import quantize_scope
from keras_shufflenet.qat.conversion import trainable_variables
from keras_shufflenet.qat.inspection import layer_steps
from keras_shufflenet.qat.layers import CUSTOM_OBJECTS
from keras_shufflenet.qat.layers import RowZeroPadding
from keras_shufflenet.qat.training import QatTrainer
from keras_shufflenet.qat.training import train
from keras_shufflenet.qat.twin import UnsupportedLayerError
from keras_shufflenet.qat.twin import copy_weights_back
from keras_shufflenet.qat.twin import tf_keras_twin
