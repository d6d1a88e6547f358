"""Validation of `ShuffleNet`'s arguments, each error naming the argument
and what was expected, so that the constructor reads as the network."""

import math
import os

import keras

from keras_shufflenet.models.layers import GROUP_CONV_IMPLEMENTATIONS
from keras_shufflenet.models.layers import SHUFFLE_ORDERS

CONCAT_ORDERS = ("shortcut_first", "branch_first")

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
            "`weights` must be None, 'imagenet', a pretrained entry's name, "
            "or the path of a checkpoint, .weights.h5 or .keras file. "
            f"Received: weights={weights!r}"
        )
    return os.fspath(weights)


def check_stem_width(stem_width, stage2, groups):
    """Checks a conv1 width against stage 2's width and the groups."""
    if not _is_positive_int(stem_width) or stem_width >= stage2 or (
        (stage2 - stem_width) % groups
    ):
        raise ValueError(
            "`stem_width` must be a positive int below stage 2's width "
            f"({stage2}) that leaves the first unit's branch a multiple of "
            f"groups ({groups}) channels. Received: stem_width={stem_width!r}"
        )


def check_pretrained_variant(
    plan, *, shallow, se, shuffle, bottleneck_multiple, include_top,
    classes, input_shape,
):
    """Checks `ShuffleNet`'s arguments against pretrained weights, as
    keras.applications does (`classes`, the input size with a top)."""
    if shallow or se or not shuffle or bottleneck_multiple != 1:
        raise ValueError(
            f"weights={plan.name!r} are for the plain variant (shallow=False, "
            "se=False, shuffle=True, bottleneck_multiple=1). Received: "
            f"shallow={shallow}, se={se}, shuffle={shuffle}, "
            f"bottleneck_multiple={bottleneck_multiple}"
        )
    if not include_top:
        return
    if plan.classes is None:
        raise ValueError(
            f"weights={plan.name!r} hold no classifier: pass "
            "include_top=False."
        )
    if classes != plan.classes:
        raise ValueError(
            f"weights={plan.name!r} have a {plan.classes}-class classifier: "
            f"with include_top=True, `classes` must be {plan.classes}; use "
            "include_top=False for another classifier. Received: "
            f"classes={classes}"
        )
    channels_last = keras.config.image_data_format() == "channels_last"
    spatial = tuple(input_shape[:2] if channels_last else input_shape[1:])
    if plan.input_size is not None and spatial != tuple(plan.input_size):
        raise ValueError(
            f"weights={plan.name!r} classify {plan.input_size[0]}x"
            f"{plan.input_size[1]} images: with include_top=True, "
            "`input_shape` must be that size (use include_top=False for "
            f"others). Received: input_shape={tuple(input_shape)}"
        )


def check_arguments(
    *, se, shuffle, shuffle_order, concat_order, group_conv_implementation,
    bottleneck_multiple, include_top, include_preprocessing, pooling,
    classes, classifier_activation, classifier_bias, stem_width,
):
    """Checks `ShuffleNet`'s options other than the shape and the weights.

    Raises:
        ValueError: The first bad argument, by name, with what was expected.
    """
    del stem_width  # Checked against the widths (`check_stem_width`).
    for argument, value in (
        ("se", se), ("shuffle", shuffle),
        ("include_top", include_top),
        ("include_preprocessing", include_preprocessing),
        ("classifier_bias", classifier_bias),
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
    if concat_order not in CONCAT_ORDERS:
        raise ValueError(
            f"`concat_order` must be one of {CONCAT_ORDERS}. "
            f"Received: concat_order={concat_order!r}"
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
