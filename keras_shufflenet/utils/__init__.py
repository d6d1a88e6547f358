"""Helpers every stage shares: atomic file writes, argument checks,
timing statistics and whether TensorFlow runs oneDNN. Imports nothing
else of this package.
"""

from keras_shufflenet.utils.checks import check_choice
from keras_shufflenet.utils.cli import exit_on_errors
from keras_shufflenet.utils.files import atomic_path
from keras_shufflenet.utils.files import write_atomic
from keras_shufflenet.utils.onednn import cpu_runs_onednn
from keras_shufflenet.utils.onednn import tensorflow_runs_nchw_conv
from keras_shufflenet.utils.plots import pyplot
from keras_shufflenet.utils.plots import write_figure
from keras_shufflenet.utils.timing import interleaved_schedule
from keras_shufflenet.utils.timing import timing_stats
