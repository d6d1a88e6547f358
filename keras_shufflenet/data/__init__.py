"""The data stage: sources (image folders, TFRecords, TFDS, the bundled
digits), the paper's preprocessing (random-crop and scale augmentation,
centre crop) and the batched `tf.data` pipeline. Imports no other stage.
"""

from keras_shufflenet.data.config import AUTOTUNE
from keras_shufflenet.data.config import DEFAULT_ASPECT_RATIO_RANGE
from keras_shufflenet.data.config import DEFAULT_CROP_FRACTION
from keras_shufflenet.data.config import IMAGE_EXTENSIONS
from keras_shufflenet.data.config import IMAGENET_TFRECORD_LABEL_OFFSET
from keras_shufflenet.data.config import OFFICIAL_COLOR_JITTER
from keras_shufflenet.data.config import SOURCES
from keras_shufflenet.data.config import InputConfig
from keras_shufflenet.data.config import default_min_crop_area
from keras_shufflenet.data.config import define_input_flags
from keras_shufflenet.data.config import input_config_from_flags
from keras_shufflenet.data.pipeline import SKIP_GROUP_SIZE
from keras_shufflenet.data.pipeline import BadDataError
from keras_shufflenet.data.pipeline import InputPipeline
from keras_shufflenet.data.pipeline import build_dataset
from keras_shufflenet.data.preprocessing import eval_crop_window
from keras_shufflenet.data.preprocessing import preprocess_for_eval
from keras_shufflenet.data.preprocessing import preprocess_for_train
from keras_shufflenet.data.preprocessing import sample_crop_window
from keras_shufflenet.data.preprocessing import to_uint8
from keras_shufflenet.data.sources import DIGITS_EVAL_FRACTION
from keras_shufflenet.data.sources import DigitsSource
from keras_shufflenet.data.sources import FolderSource
from keras_shufflenet.data.sources import TFDSSource
from keras_shufflenet.data.sources import TFRecordSource
from keras_shufflenet.data.sources import digits_train_augment
from keras_shufflenet.data.sources import load_digits_arrays
