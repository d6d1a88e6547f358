"""The models the latency benchmark measures (Table 8): ShuffleNet
variants, their deployment options, and keras.applications peers.
"""

import dataclasses
import os

import keras

from keras_shufflenet.lite.rewrite import DEFAULT_REWRITES
from keras_shufflenet.lite.rewrite import REWRITES
from keras_shufflenet.models.naming import parse_variant_name
from keras_shufflenet.models.naming import variant_name
from keras_shufflenet.models.shufflenet import ShuffleNet
from keras_shufflenet.models.shufflenet import shufflenet_widths
from keras_shufflenet.utils.checks import check_choice

# Table 8's three input resolutions, (height, width).
RESOLUTIONS = {
    "224x224": (224, 224),
    "480x640": (480, 640),
    "720x1280": (720, 1280),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model to benchmark: built by Keras and converted, or a `.tflite`.

    Args:
        name: Row name, e.g. `"shufflenet_1.0x_g3"`.
        family: Plot colour group, e.g. `"shufflenet"` or `"mobilenet_v2"`.
        builder: For Keras models, `builder(input_shape, logits)` returning
            the model; `logits=True` asks for no final softmax.
        kwargs: The builder's configuration, part of the cache key.
        deployment: Arguments of `deployment_model` for this model,
            e.g. `{"rewrites": ()}`. Defaults to None (the default
            deployment graph).
        path: For a user `.tflite`, its path (its resolution and mode are
            the file's). Defaults to None.
        route: How a Keras model is converted, one of `ROUTES`: this
            package's `convert` or a standard conversion (`lite.standard`).
            Defaults to `"keras_shufflenet"`.
    """
    name: str
    family: str
    builder: object = None
    kwargs: tuple = ()
    deployment: tuple = None
    path: str = None
    route: str = "keras_shufflenet"

    def build(self, input_shape, logits):
        return self.builder(input_shape, logits)


def _shufflenet_builder(scale, groups, **extra):
    def build(input_shape, logits):
        return ShuffleNet(
            scale,
            groups,
            input_shape=input_shape,
            classifier_activation=None if logits else "softmax",
            **extra,
        )

    return build


def shufflenet_spec(scale, groups=3, deployment=None, suffix="", **kwargs):
    """Returns the `ModelSpec` of `ShuffleNet(scale, groups, **kwargs)`.

    Args:
        scale: Width multiplier.
        groups: Groups. Defaults to 3 (Table 8's).
        deployment: `deployment_model` arguments. Defaults to None.
        suffix: Appended to the row name, e.g. `"[straightforward]"`.
        **kwargs: More `ShuffleNet` arguments.

    Returns:
        A `ModelSpec` named like `"shufflenet_1.0x_g3"`.
    """
    return ModelSpec(
        name=variant_name(scale, groups) + suffix,
        family="shufflenet",
        builder=_shufflenet_builder(scale, groups, **kwargs),
        kwargs=(("scale", scale), ("groups", groups))
        + tuple(sorted(kwargs.items())),
        deployment=None if deployment is None else tuple(
            sorted(deployment.items())
        ),
    )


def with_deployment(spec, suffix, **deployment):
    """A copy of `spec` exported with other `deployment_model` arguments.

    Args:
        spec: A Keras `ModelSpec`.
        suffix: Appended to the name, e.g. `"[straightforward]"`.
        **deployment: `deployment_model` arguments, e.g.
            `rewrites=()` for the straightforward graph.

    Returns:
        A `ModelSpec`.
    """
    return dataclasses.replace(
        spec,
        name=spec.name + suffix,
        deployment=tuple(sorted(deployment.items())),
    )


def without_rewrite(spec, rewrite):
    """A copy of `spec` exported with one default rewrite left out: its
    layers back to the plain Keras ones, to measure what the lowering gives.

    Args:
        spec: A Keras `ModelSpec` with the default deployment graph.
        rewrite: A name in `DEFAULT_REWRITES`.

    Returns:
        A `ModelSpec` named like `"shufflenet_1.0x_g3[-preprocessing]"`.
    """
    if rewrite not in DEFAULT_REWRITES:
        raise ValueError(
            f"{rewrite!r} is not one of {', '.join(DEFAULT_REWRITES)}."
        )
    return with_deployment(
        spec,
        f"[-{rewrite}]",
        rewrites=tuple(r for r in DEFAULT_REWRITES if r != rewrite),
    )


def with_rewrite(spec, rewrite):
    """A copy of `spec` exported with one opt-in rewrite added.

    Args:
        spec: A Keras `ModelSpec` with the default deployment graph.
        rewrite: A name in `REWRITES` but not in `DEFAULT_REWRITES`.

    Returns:
        A `ModelSpec` named like `"shufflenet_1.0x_g3[+groupwise_units]"`.
    """
    optional = tuple(r for r in REWRITES if r not in DEFAULT_REWRITES)
    if rewrite not in optional:
        raise ValueError(f"{rewrite!r} is not one of {', '.join(optional)}.")
    return with_deployment(
        spec, f"[+{rewrite}]", rewrites=DEFAULT_REWRITES + (rewrite,)
    )


# Row suffixes of the standard conversions.
ROUTE_SUFFIXES = {
    "litert_export": "[model.export]",
    "tflite_converter": "[TFLiteConverter]",
}


def with_route(spec, route):
    """A copy of `spec` converted by a standard route (see `ROUTES`).

    Args:
        spec: A Keras `ModelSpec`.
        route: `"litert_export"` or `"tflite_converter"`.

    Returns:
        A `ModelSpec` named like `"shufflenet_1.0x_g3[model.export]"`.
    """
    check_choice("route", route, tuple(ROUTE_SUFFIXES))
    return dataclasses.replace(
        spec, name=spec.name + ROUTE_SUFFIXES[route], route=route
    )


def _peer_builder(name, **extra):
    def build(input_shape, logits):
        constructor = getattr(keras.applications, name)
        return constructor(
            input_shape=input_shape,
            weights=None,
            classifier_activation=None if logits else "softmax",
            **extra,
        )

    return build


def _peer(name, family, constructor, **kwargs):
    return ModelSpec(
        name=name,
        family=family,
        builder=_peer_builder(constructor, **kwargs),
        kwargs=(("constructor", constructor),) + tuple(sorted(kwargs.items())),
    )


# The comparison models from `keras.applications` (random weights), with
# the FLOPs the papers list: MobileNet (Table 8's comparison) 569/149/41 M,
# MobileNetV2 300/97/59 M, MobileNetV3 Large/Small 217/57 M.
LATENCY_PEERS = {
    spec.name: spec
    for spec in (
        _peer("mobilenet_1.0", "mobilenet", "MobileNet", alpha=1.0),
        _peer("mobilenet_0.5", "mobilenet", "MobileNet", alpha=0.5),
        _peer("mobilenet_0.25", "mobilenet", "MobileNet", alpha=0.25),
        _peer("mobilenet_v2_1.0", "mobilenet_v2", "MobileNetV2", alpha=1.0),
        _peer("mobilenet_v2_0.5", "mobilenet_v2", "MobileNetV2", alpha=0.5),
        _peer(
            "mobilenet_v2_0.35", "mobilenet_v2", "MobileNetV2", alpha=0.35
        ),
        _peer("mobilenet_v3_small", "mobilenet_v3", "MobileNetV3Small"),
        _peer("mobilenet_v3_large", "mobilenet_v3", "MobileNetV3Large"),
    )
}


# Table 8's ShuffleNet rows.
SHUFFLENETS = {
    spec.name: spec
    for spec in (shufflenet_spec(s, 3) for s in (0.5, 1.0, 2.0))
}


def default_models():
    """Table 8's ShuffleNets followed by every peer, as `ModelSpec`s."""
    return list(SHUFFLENETS.values()) + list(LATENCY_PEERS.values())


def model_specs(names):
    """Looks up `ModelSpec`s by name (see `SHUFFLENETS` and `LATENCY_PEERS`).

    Args:
        names: Model names, such as `"mobilenet_0.5"` or
            `"shufflenet_<scale>x_g<groups>"` for any ShuffleNet, e.g.
            `"shufflenet_1.0x_g1"`.

    Returns:
        A list of `ModelSpec`s in the given order.
    """
    known = {**SHUFFLENETS, **LATENCY_PEERS}
    specs = []
    for name in names:
        if name in known:
            specs.append(known[name])
            continue
        try:
            variant = parse_variant_name(name, argument="models")
        except ValueError:
            raise ValueError(
                f"Unknown model {name!r}; expected one of {sorted(known)} "
                "or shufflenet_<scale>x_g<groups>."
            ) from None
        if variant["suffix"] or not variant["shuffle"] or variant["se"] or (
            variant["shallow"]
        ):
            raise ValueError(
                f"Unknown model {name!r}: the benchmark names plain "
                "variants, shufflenet_<scale>x_g<groups>."
            )
        scale, groups = variant["scale"], variant["groups"]
        shufflenet_widths(scale, groups)  # Names a bad scale or groups.
        specs.append(shufflenet_spec(scale, groups))
    return specs


def tflite_spec(path):
    """A `ModelSpec` for a user `.tflite` file, named after the file."""
    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ValueError(
            f"Expected a .tflite file. Received: {path!r}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TFLite model not found: {path}")
    name = os.path.splitext(os.path.basename(path))[0]
    return ModelSpec(name=name, family="tflite", path=path)


def parse_resolution(text):
    """Parses `"480x640"` (height x width) into `(480, 640)`."""
    try:
        height, width = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(
            "A resolution is HEIGHTxWIDTH, such as 224x224 or 480x640. "
            f"Received: {text!r}"
        ) from None
    if height < 32 or width < 32:
        raise ValueError(
            f"Resolutions must be at least 32x32. Received: {text!r}"
        )
    return height, width
