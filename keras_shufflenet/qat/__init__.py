"""The quantization-aware training stage: a trained ShuffleNet's
`tf_keras` twin, tensorflow-model-optimization's 8-bit QAT on it,
fine-tuning with the training recipe, and conversion to a full-int8
TFLite model. Needs the `[qat]` extra (tf_keras and
tensorflow-model-optimization); imports `models`, `data`, `training` and
`lite`, and nothing imports it.

A user of this stage calls `train_qat(config)` (what `recipes/train.py
--qat_from=...` runs), or step by step: `tf_keras_twin(model)`,
`qat_model(twin)`, `calibrated_qat_model`, `QatTrainer`, `convert_qat`
and `copy_weights_back`; `snap_biases` puts the biases on the int8 grid
before export. A model the twin cannot express raises
`UnsupportedLayerError`.
"""

from keras_shufflenet.qat.biases import snap_biases
from keras_shufflenet.qat.conversion import calibrated_qat_model
from keras_shufflenet.qat.conversion import convert_qat
from keras_shufflenet.qat.conversion import qat_model
from keras_shufflenet.qat.trainer import QatTrainer
from keras_shufflenet.qat.trainer import train_qat
from keras_shufflenet.qat.twin import UnsupportedLayerError
from keras_shufflenet.qat.twin import copy_weights_back
from keras_shufflenet.qat.twin import tf_keras_twin
