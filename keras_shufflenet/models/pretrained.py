"""How `ShuffleNet(weights=...)` gets weights that are not a Keras file.

A `.keras` or `.weights.h5` path loads as it is. Anything else,
`"imagenet"`, the name of a pretrained entry or a checkpoint of another
implementation, is resolved by the `weights` stage, which registers
itself here when `keras_shufflenet` is imported: the model stage imports
no later stage, so the dependency runs through this hook.
"""

import dataclasses
import types

from keras_shufflenet.models.checks import check_weights
from keras_shufflenet.models.parts import network_parts

# The `ShuffleNet` arguments with which a network of another
# implementation differs from the paper's (`models.shufflenet`), each
# None by default: the paper's choice, or what the weights need.
ARCHITECTURE_DEFAULTS = types.MappingProxyType(
    {
        "shuffle_order": "paper",
        "include_preprocessing": True,
        "concat_order": "shortcut_first",
        "classifier_bias": False,
        "stem_width": None,
    }
)
KERAS_WEIGHTS_SUFFIXES = (".weights.h5", ".keras")


@dataclasses.dataclass(frozen=True)
class WeightsPlan:
    """Pretrained weights `ShuffleNet` builds for and then loads.

    Attributes:
        name: How messages name the weights (an entry's name or a path).
        architecture: The `ShuffleNet` arguments the weights fix, a subset
            of `ARCHITECTURE_DEFAULTS`.
        classes: The classifier's outputs, None for weights without one.
        input_size: `(height, width)` the classifier was trained at, or
            None when unknown; with `include_top=True` the model takes
            this size, as in keras.applications.
        load: `load(model)` assigns the weights to a built model.
    """

    name: str
    architecture: types.MappingProxyType
    classes: int | None
    input_size: tuple | None
    load: object


_resolvers = []


def register_resolver(resolver):
    """Lets the `weights` stage resolve names and checkpoint files.

    Args:
        resolver: `resolver(weights, scale, groups)` returns a
            `WeightsPlan`, or raises ValueError or FileNotFoundError.
    """
    if resolver not in _resolvers:
        _resolvers.append(resolver)


def merge_architecture(name, needed, requested, prefix=""):
    """Fills the architecture arguments the weights `needed` into
    `requested`, refusing a set value that differs.

    Args:
        name: How messages name the weights.
        needed: The arguments the weights fix.
        requested: The caller's arguments, None where not given.
        prefix: What the caller's arguments are called with (`"model."`
            for a training config's flags).

    Returns:
        `requested` with every argument of `needed` set.

    Raises:
        ValueError: A requested value conflicts with the weights'.
    """
    merged = dict(requested)
    for key, value in needed.items():
        given = requested.get(key)
        if given is not None and given != value:
            raise ValueError(
                f"{prefix}weights={name!r} need {prefix}{key}={value!r}. "
                f"Received: {prefix}{key}={given!r}; leave it unset to "
                "take the weights' value."
            )
        merged[key] = value
    return merged


def architecture_options(plan, **requested):
    """The architecture arguments for `ShuffleNet`, filled from `plan`.

    An argument left as None takes the weights' value (or the paper's
    default, `ARCHITECTURE_DEFAULTS`); one that differs from what the
    weights need is refused rather than silently replaced.

    Args:
        plan: A `WeightsPlan`, or None for no pretrained weights.
        **requested: The caller's `ARCHITECTURE_DEFAULTS` arguments (None
            where not given).

    Returns:
        A dict of every `ARCHITECTURE_DEFAULTS` argument.

    Raises:
        ValueError: A requested value conflicts with the weights'.
    """
    if plan is not None:
        requested = merge_architecture(
            plan.name, plan.architecture, requested
        )
    return {
        key: default if requested.get(key) is None else requested[key]
        for key, default in ARCHITECTURE_DEFAULTS.items()
    }


def plan_weights(weights, scale, groups):
    """What `ShuffleNet(scale, groups, weights=weights)` loads.

    Args:
        weights: None, a path to a `.keras` or `.weights.h5` file, or what
            the `weights` stage resolves: `"imagenet"`, an entry's name, or
            a checkpoint file of a supported implementation.
        scale: The requested width multiplier.
        groups: The requested groups.

    Returns:
        None, a Keras weights path, or a `WeightsPlan`.

    Raises:
        ValueError: `weights` is of the wrong type, unknown, or for another
            variant; the message names it.
        FileNotFoundError: A named file does not exist.
    """
    weights = check_weights(weights)
    if weights is None or weights.endswith(KERAS_WEIGHTS_SUFFIXES):
        return weights
    if not _resolvers:
        raise ValueError(
            f"weights={weights!r} needs keras_shufflenet.weights, which "
            "registers itself when keras_shufflenet is imported: "
            "`import keras_shufflenet`."
        )
    return _resolvers[-1](weights, scale, groups)


def architecture_of(model):
    """The architecture arguments a built `ShuffleNet` was built with.

    Read from its parts, so it works on a model loaded from a `.keras`
    file: the stem's width, the first shuffle's order, the first stride-2
    unit's concatenation, the normalisation layer and the classifier's
    bias.

    Returns:
        A dict of `ARCHITECTURE_DEFAULTS`' keys.
    """
    parts = network_parts(model)
    first = parts.units[0]
    shuffles = [u["shuffle"] for u in parts.units if "shuffle" in u.layers]
    concat = first["concat"]
    classifier = parts.head.get("predictions")
    return {
        "shuffle_order": shuffles[0].order if shuffles else "paper",
        "include_preprocessing": "preprocessing" in parts.input,
        "concat_order": (
            "branch_first"
            if concat.input[0] is first["branch_relu"].output
            else "shortcut_first"
        ),
        "classifier_bias": bool(classifier and classifier.use_bias),
        "stem_width": parts.stem["conv1"].filters,
    }
