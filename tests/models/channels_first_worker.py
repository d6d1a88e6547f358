"""Runs the channels_first checks in a process of its own.

Whether TensorFlow runs NCHW convolutions on a CPU is fixed when it starts
(`TF_ENABLE_ONEDNN_OPTS`, else its own choice from the CPU), so the tests
start this script with the setting they want and read one JSON line back.

Usage: channels_first_worker.py OUTPUT_JSON
"""

import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The repository root, two folders up.
sys.path.insert(
    0,
    os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ),
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_shufflenet as ks  # noqa: E402
from keras_shufflenet.models import layers  # noqa: E402
from keras_shufflenet.models import shufflenet  # noqa: E402


def numpy_group_conv(x, kernel, groups):
    """Section 3.2's pointwise group conv on the last axis, in numpy.

    `kernel` has `Conv2D(groups=groups)`'s `(in / groups, out)` layout.
    """
    n_in, n_out = x.shape[-1] // groups, kernel.shape[-1] // groups
    return np.concatenate(
        [
            x[..., g * n_in:(g + 1) * n_in]
            @ kernel[:, g * n_out:(g + 1) * n_out]
            for g in range(groups)
        ],
        axis=-1,
    )


def _layer_errors():
    """Largest error of each channels_first layer against numpy."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 12, 5, 3)).astype("float32")
    errors = {}
    for groups in (1, 2, 3):
        for implementation in ("split", "grouped", "dense"):
            layer = ks.PointwiseGroupConv2D(
                6, groups, implementation=implementation,
                data_format="channels_first",
            )
            y = keras.ops.convert_to_numpy(layer(x))
            expected = numpy_group_conv(
                np.moveaxis(x, 1, -1), layer.kernel.numpy()[0, 0], groups
            )
            key = f"PointwiseGroupConv2D g{groups} {implementation}"
            errors[key] = float(
                np.abs(y - np.moveaxis(expected, -1, 1)).max()
            )
    shuffle = ks.ChannelShuffle(3, data_format="channels_first")
    y = keras.ops.convert_to_numpy(shuffle(x))
    perm = layers.shuffle_permutation(12, 3)
    errors["ChannelShuffle"] = float(np.abs(y - x[:, perm]).max())
    return errors


def _model_error():
    """channels_first model against the channels_last one, same weights."""
    models = {}
    for data_format, shape in [
        ("channels_last", (64, 64, 3)), ("channels_first", (3, 64, 64))
    ]:
        keras.config.set_image_data_format(data_format)
        models[data_format] = ks.ShuffleNet(
            0.25, 3, se=True, input_shape=shape, classes=10,
            classifier_activation=None,
        )
    last, first = models["channels_last"], models["channels_first"]
    first.set_weights(last.get_weights())
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3))
    x = x.astype("float32")
    y_last = keras.ops.convert_to_numpy(last(x))
    y_first = keras.ops.convert_to_numpy(first(np.moveaxis(x, -1, 1)))
    return float(np.abs(y_first - y_last).max() / np.abs(y_last).max())


def main(output_json):
    result = {
        "runs_nchw": shufflenet.backend_runs_channels_first_conv(),
        "layer_errors": _layer_errors(),
    }
    keras.config.set_image_data_format("channels_first")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ks.ShuffleNet(0.25, 3, input_shape=(3, 64, 64), classes=10)
    result["warnings"] = [str(w.message) for w in caught]
    if result["runs_nchw"]:
        result["model_relative_error"] = _model_error()
    with open(output_json, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
