"""The model a conversion or evaluation program works on, from its flags:
`--model` (a whole `.keras` model) or a ShuffleNet built from `--scale`,
`--groups`, ... with optional `--weights`.
"""

from absl import flags

from keras_shufflenet.lite.saved_model import load_or_build_model


def define_model_flags(purpose, flag_values=flags.FLAGS, scale=1.0):
    """Defines `--model`, `--weights` and the ShuffleNet architecture flags.

    Args:
        purpose: What the program does with the model, for `--model`'s
            help (e.g. "to convert").
        flag_values: The `FlagValues` to define them in.
        scale: `--scale`'s default; None makes the built model optional
            (`model_from_flags` returns None without `--scale`/`--weights`).
    """
    define = {"flag_values": flag_values}
    flags.DEFINE_string("model", None, f"A .keras model {purpose}.", **define)
    flags.DEFINE_string(
        "weights", None,
        "Weights (.weights.h5/.keras, or a registered name) for the "
        "ShuffleNet built from --scale, --groups, ...; without --model.",
        **define,
    )
    flags.DEFINE_float("scale", scale, "ShuffleNet width multiplier.",
                       **define)
    flags.DEFINE_integer("groups", 3, "Pointwise conv groups.", **define)
    flags.DEFINE_bool("se", False, "Squeeze-and-excitation units.", **define)
    flags.DEFINE_bool("shallow", False, "Half-depth stages.", **define)
    flags.DEFINE_integer("classes", 1000, "Classifier classes.", **define)
    flags.DEFINE_enum(
        "shuffle_order", None, ["paper", "official"],
        "Channel shuffle order of the built ShuffleNet. Defaults to "
        "'paper', or to what --weights need.",
        **define,
    )


def model_from_flags(image_size, flag_values=flags.FLAGS):
    """Loads `--model`, or builds the ShuffleNet the flags describe.

    Args:
        image_size: Input side of a built ShuffleNet.
        flag_values: The parsed `FlagValues`.

    Returns:
        A `keras.Model`, or None when `--scale` defaults to None and
        neither `--model`, `--scale` nor `--weights` is given.
    """
    f = flag_values
    if f.model:
        return load_or_build_model(f.model)
    if f.scale is None and f.weights is None:
        return None
    return load_or_build_model(
        weights=f.weights,
        image_size=image_size,
        scale=1.0 if f.scale is None else f.scale,
        groups=f.groups,
        se=f.se,
        shallow=f.shallow,
        classes=f.classes,
        shuffle_order=f.shuffle_order,
    )
