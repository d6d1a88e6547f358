"""The data stage: sources (image folders, TFRecords, TFDS, the bundled
digits), the paper's preprocessing (random-crop and scale augmentation,
centre crop) and the batched `tf.data` pipeline. Imports no other stage.

A user of this stage calls:

- `InputConfig`, which names a source and its preprocessing, and
  `InputPipeline(config).dataset(training, batch_size)`;
- `preprocess_for_train` and `preprocess_for_eval`, one image's crops;
- `load_digits_arrays`, the embedded digits as arrays;
- `define_input_flags` and `input_config_from_flags`, a program's
  `--data.*` flags;
- `BadDataError`, raised when more images fail to decode than allowed.

The modules hold the sources themselves (`sources`) and their
constants.
"""

from keras_shufflenet.data.config import InputConfig
from keras_shufflenet.data.config import define_input_flags
from keras_shufflenet.data.config import input_config_from_flags
from keras_shufflenet.data.pipeline import BadDataError
from keras_shufflenet.data.pipeline import InputPipeline
from keras_shufflenet.data.preprocessing import preprocess_for_eval
from keras_shufflenet.data.preprocessing import preprocess_for_train
from keras_shufflenet.data.sources import load_digits_arrays
