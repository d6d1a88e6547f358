"""Starting a run from pretrained weights: the architecture the weights
need, the weights themselves (a new classifier where the classes differ)
and freezing the stem and stages, as Keras' transfer-learning guide does
(a frozen batch norm runs in inference mode and keeps its statistics).
"""

import dataclasses

from keras_shufflenet.models.loading import load_model
from keras_shufflenet.models.loading import load_weights
from keras_shufflenet.models.parts import network_parts
from keras_shufflenet.models.pretrained import ARCHITECTURE_DEFAULTS
from keras_shufflenet.models.pretrained import architecture_of
from keras_shufflenet.models.pretrained import merge_architecture
from keras_shufflenet.models.pretrained import plan_weights
from keras_shufflenet.models.shufflenet import ShuffleNet
from keras_shufflenet.training.config import FREEZE_POINTS


def with_weights_architecture(model_config, saved=None):
    """`model_config` with its architecture filled from its `weights`.

    An architecture argument left None takes what the weights need (a
    pytorchcv checkpoint's concatenation order, say); one set to
    something else is refused. Without weights, or for a `.weights.h5`
    file (of this package's own runs), the config is returned as it is.

    Args:
        model_config: A `ModelConfig`.
        saved: The `ModelConfig` the run saved when it started, if any: a
            restarted run takes the architecture from it, so it resumes
            without reading the weights again.

    Raises:
        ValueError: A set argument conflicts with the weights.
    """
    weights = model_config.weights
    if not weights or weights.endswith(".weights.h5"):
        return model_config
    if saved is not None and saved.weights == weights:
        needed = {
            key: getattr(saved, key) for key in ARCHITECTURE_DEFAULTS
            if getattr(saved, key) is not None
        }
        name = weights
    elif weights.endswith(".keras"):
        needed = architecture_of(load_model(weights, "model.weights"))
        name = weights
    else:
        plan = plan_weights(weights, model_config.scale, model_config.groups)
        needed, name = dict(plan.architecture), plan.name
    merged = merge_architecture(
        name, needed,
        {key: getattr(model_config, key) for key in needed}, prefix="model.",
    )
    return dataclasses.replace(model_config, **merged)


def _donor(model_config, image_size):
    """A model that holds `model_config.weights`, with its classifier."""
    weights = model_config.weights
    if weights.endswith(".keras"):
        return load_model(weights, "model.weights")
    architecture = {k: getattr(model_config, k) for k in ARCHITECTURE_DEFAULTS}
    variant = dict(
        se=model_config.se, shallow=model_config.shallow,
        shuffle=model_config.shuffle, classifier_activation=None,
        **architecture,
    )
    if weights.endswith(".weights.h5"):
        # This package's own file: its classifier is not known up front.
        # Keras loads a file with a top into a model without one.
        model = ShuffleNet(
            model_config.scale, model_config.groups, include_top=False,
            input_shape=(image_size, image_size, 3), **variant,
        )
        load_weights(model, weights)
        return model
    plan = plan_weights(weights, model_config.scale, model_config.groups)
    size = (plan.input_size or (image_size, image_size)) + (3,)
    return ShuffleNet(
        model_config.scale, model_config.groups, weights=weights,
        include_top=plan.classes is not None, classes=plan.classes or 1,
        input_shape=size, **variant,
    )


def initialize_from_weights(model, model_config, image_size):
    """Loads `model_config.weights` into a new run's model, layer by layer.

    Every layer with weights takes the donor's layer of its name. Where
    the classifier's shape differs (other classes), it keeps its fresh
    initialisation; any other layer that differs is an error.

    Args:
        model: The run's `ShuffleNet`, built with
            `with_weights_architecture(model_config)`.
        model_config: Its `ModelConfig`, with `weights` set.
        image_size: The run's input side.

    Returns:
        `(loaded, total, fresh)`: tensors loaded, tensors of the model
        and the names of the layers that start fresh.

    Raises:
        ValueError: A layer other than the classifier does not fit; the
            message names it and both shapes.
    """
    donor = {layer.name: layer for layer in _donor(model_config, image_size)
             .layers if layer.weights}
    classifier = network_parts(model).head.get("predictions")
    loaded, total, fresh = 0, 0, []
    for layer in model.layers:
        if not layer.weights:
            continue
        total += len(layer.weights)
        source = donor.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        found = None if source is None else [
            tuple(w.shape) for w in source.weights
        ]
        if found != shapes:
            if layer is classifier:
                fresh.append(layer.name)
                continue
            raise ValueError(
                f"model.weights={model_config.weights!r} do not fit layer "
                f"{layer.name!r}: it needs weights of shapes {shapes}, the "
                f"weights hold {found or 'none'}."
            )
        layer.set_weights(source.get_weights())
        loaded += len(layer.weights)
    return loaded, total, fresh


def freeze(model, until):
    """Freezes the stem and the stages up to `until` (`FREEZE_POINTS`).

    A frozen layer's weights do not train; a frozen batch norm runs in
    inference mode, its statistics fixed (Keras 3's `trainable=False`).

    Returns:
        The names of the layers frozen that hold weights.
    """
    if until not in FREEZE_POINTS:
        raise ValueError(
            f"`freeze` must be one of {FREEZE_POINTS}. Received: {until!r}"
        )
    last = FREEZE_POINTS.index(until) + 1  # Stages are 2, 3, 4.
    parts = network_parts(model)
    layers = list(parts.input.values()) + list(parts.stem.values())
    for unit in parts.units:
        if unit.stage <= last:
            layers += list(unit.layers.values())
    for layer in layers:
        layer.trainable = False
    return [layer.name for layer in layers if layer.weights]
