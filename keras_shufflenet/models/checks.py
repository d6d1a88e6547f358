"""Validation of `ShuffleNet`'s arguments, each error naming the argument
and what was expected, so that the constructor reads as the network."""

import math
import os

import keras

from keras_shufflenet.models.layers import GROUP_CONV_IMPLEMENTATIONS
from keras_shufflenet.models.layers import SHUFFLE_ORDERS

# Table 1's group counts.
GROUPS = (1, 2, 3, 4, 8)
# The network downsamples by 32.
MIN_INPUT_SIZE = 32


def check_scale_groups(scale, groups):
    """Checks a width multiplier and a group count of Table 1."""
    if isinstance(groups, bool) or groups not in GROUPS:
        raise ValueError(
            f"`groups` must be one of {list(GROUPS)} (Table 1). "
            f"Received: groups={groups!r}"
        )
    if (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not math.isfinite(scale)
        or scale <= 0
    ):
        raise ValueError(
            "`scale` must be a positive number, such as 0.25, 0.5, 1.0, 1.5 "
            f"or 2.0. Received: scale={scale!r}"
        )


def check_input_shape(input_shape, input_tensor, include_preprocessing):
    """Returns the input shape, defaulted to 224x224x3, after checking it.

    Raises:
        ValueError: Not 3 entries, a side under 32, no channels, or not 3
            channels where the model normalises RGB itself.
    """
    channels_last = keras.config.image_data_format() == "channels_last"
    if input_tensor is not None and input_shape is None:
        input_shape = tuple(input_tensor.shape[1:])
    if input_shape is None:
        return (224, 224, 3) if channels_last else (3, 224, 224)
    try:
        input_shape = tuple(None if d is None else int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ValueError(
            "`input_shape` must be a tuple of 3 ints or None, such as "
            f"(224, 224, 3). Received: input_shape={input_shape!r}"
        ) from None
    if len(input_shape) != 3:
        raise ValueError(
            "`input_shape` must have 3 entries (height, width, channels), "
            f"without the batch size. Received: input_shape={input_shape}"
        )
    spatial = input_shape[:2] if channels_last else input_shape[1:]
    channels = input_shape[2] if channels_last else input_shape[0]
    for size in spatial:
        if size is not None and size < MIN_INPUT_SIZE:
            raise ValueError(
                f"Height and width in `input_shape` must be at least "
                f"{MIN_INPUT_SIZE} (the network downsamples by 32) or None. "
                f"Received: input_shape={input_shape}"
            )
    if channels is None or channels < 1:
        raise ValueError(
            "The channel count in `input_shape` must be a positive int. "
            f"Received: input_shape={input_shape}"
        )
    if include_preprocessing and channels != 3:
        raise ValueError(
            "`include_preprocessing=True` normalises RGB images, so "
            f"`input_shape` needs 3 channels. Received: input_shape="
            f"{input_shape}. Pass include_preprocessing=False for other "
            "inputs."
        )
    return input_shape


def check_weights(weights):
    """Returns `weights` as a string path or name, or None."""
    if weights is None:
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            "`weights` must be None, a path to a .weights.h5 or .keras file, "
            f"or a registered weights name. Received: weights={weights!r}"
        )
    return os.fspath(weights)


def check_arguments(
    *, se, shuffle, shuffle_order, group_conv_implementation,
    bottleneck_multiple, include_top, include_preprocessing, pooling,
    classes, classifier_activation,
):
    """Checks `ShuffleNet`'s options other than the shape and the weights.

    Raises:
        ValueError: The first bad argument, by name, with what was expected.
    """
    for argument, value in (
        ("se", se), ("shuffle", shuffle),
        ("include_top", include_top),
        ("include_preprocessing", include_preprocessing),
    ):
        if not isinstance(value, bool):
            raise ValueError(
                f"`{argument}` must be a bool. Received: {argument}={value!r}"
            )
    if shuffle_order not in SHUFFLE_ORDERS:
        raise ValueError(
            f"`shuffle_order` must be one of {SHUFFLE_ORDERS}. "
            f"Received: shuffle_order={shuffle_order!r}"
        )
    if group_conv_implementation not in GROUP_CONV_IMPLEMENTATIONS:
        raise ValueError(
            "`group_conv_implementation` must be one of "
            f"{GROUP_CONV_IMPLEMENTATIONS}. Received: "
            f"group_conv_implementation={group_conv_implementation!r}"
        )
    if not _is_positive_int(bottleneck_multiple):
        raise ValueError(
            "`bottleneck_multiple` must be a positive int. Received: "
            f"bottleneck_multiple={bottleneck_multiple!r}"
        )
    if pooling not in (None, "avg", "max"):
        raise ValueError(
            "`pooling` must be None, 'avg' or 'max'. "
            f"Received: pooling={pooling!r}"
        )
    if include_top and not _is_positive_int(classes):
        raise ValueError(
            "`classes` must be a positive int when include_top=True. "
            f"Received: classes={classes!r}"
        )
    if include_top:
        try:
            keras.activations.get(classifier_activation)
        except (ValueError, TypeError):
            raise ValueError(
                "`classifier_activation` must be None, a Keras activation "
                "name or a callable. Received: "
                f"classifier_activation={classifier_activation!r}"
            ) from None


def _is_positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
