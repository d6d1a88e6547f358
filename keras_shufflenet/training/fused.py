"""A faster training graph for ShuffleNet that shares the model's weights.

Keras 3's TensorFlow backend computes `BatchNormalization` in training mode
as separate element-wise ops (no fused kernel; keras-team/keras-core#225),
and a pointwise group convolution on CPU or GPU needs the input split into
groups and the outputs concatenated again. Each of those ops is one more
pass over an activation tensor. In ShuffleNet 1x (g=3) they cost more than
the convolutions (README.md, "Training speed").

`training_model(model)` returns a second functional model that holds no
weights of its own: its layers wrap the layers of `model` and use their
variables. It computes the same function as `model` in training mode
(batch statistics) and in inference mode, and updates the same moving
statistics, with fewer passes:

- Every stride-1 ShuffleNet unit (Figure 2b) is one `FusedShuffleUnit`,
  and consecutive units pass their activations on as one tensor per group,
  so the group convolutions need no split and no concatenation. The
  channel shuffle becomes slices of the per-group bottlenecks.
- In every unit, the depthwise conv's batch norm, the second group conv
  and its batch norm become one `FusedBranchTail`: both batch norms'
  statistics follow from the mean and the per-group Gram matrix of the
  depthwise output (a small matrix product), so the normalisations fold
  into the convolution kernel and one bias, and the wide output is
  written once.
- Every other batch norm is a `FastBatchNormalization`, whose gradient is
  the closed form (Ioffe and Szegedy, 2015) rather than the autodiff of
  its parts.
- A stride-2 unit after fused units runs its first group conv on their
  per-group tensors (`GroupwisePointwiseConv`), without a split.
- The input normalisation broadcasts constants tiled over the image width
  (`lite.rewrite`'s `"preprocessing"`) rather than a 3-vector per pixel.

Train `training_model(model)` and save, export or evaluate `model`: they
share the variables. Under a mixed-precision policy only the batch norm
gradient changes; the fused units and tails need float32 (or float64)
statistics and are left to the layers of `model`.
"""

import keras

from keras_shufflenet.models.graph import PerGroupGraph
from keras_shufflenet.models.graph import fusable_layers
from keras_shufflenet.models.graph import is_plain_batch_norm
from keras_shufflenet.models.layers import PointwiseGroupConv2D
from keras_shufflenet.models.lowering import tiled_normalization
from keras_shufflenet.training.fused_layers import FastBatchNormalization
from keras_shufflenet.training.fused_layers import FusedBranchTail
from keras_shufflenet.training.fused_layers import FusedShuffleUnit
from keras_shufflenet.training.fused_layers import GroupwisePointwiseConv


def training_model(model, *, fuse=True):
    """Returns a faster training graph of a ShuffleNet, sharing its weights.

    The returned `keras.Model` has the same inputs and outputs as `model`
    and computes the same function, in training and in inference mode, with
    `model`'s own variables (see the module docstring for the rewrites).
    Train it; save, evaluate and export `model`.

    Reference:
        Zhang et al., "ShuffleNet", Figure 2 (the unit); Ioffe and
        Szegedy, "Batch Normalization", section 3 (the gradient).

    Args:
        model: A functional model from `ShuffleNet(...)`. Layers of other
            models are called as they are, except batch norms, which get
            the closed-form gradient.
        fuse: Whether to fuse the units and branch tails. False keeps only
            the batch norm gradient. Defaults to True.

    Returns:
        A functional `keras.Model` whose layers wrap those of `model`.

    Example:

    >>> model = ShuffleNet(1.0, 3)
    >>> trainer = training_model(model)
    >>> trainer.compile("sgd", "sparse_categorical_crossentropy")
    >>> trainer.fit(images, labels)   # trains `model`'s weights
    >>> model.save("shufflenet.keras")
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs"):
        raise ValueError(
            "`model` must be a functional keras.Model such as "
            f"ShuffleNet(...). Received: {type(model).__name__}"
        )
    # Frozen units (fine-tuning) run as they are: the fused layers train
    # batch statistics, which a frozen batch norm does not use.
    units, tails = (
        fusable_layers(model, trainable_only=True) if fuse else ({}, {})
    )
    graph = PerGroupGraph(model)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer in graph.skipped:
            continue
        if layer in units:
            unit = units[layer]
            graph.call_unit(unit, FusedShuffleUnit.from_unit(unit))
            continue
        if layer in tails:
            dw_norm, conv, norm = tails[layer]
            graph.set(
                norm.output,
                FusedBranchTail(dw_norm, conv, norm)(
                    graph.resolve(dw_norm.input)
                ),
            )
            graph.skipped.update((conv, norm))
            continue
        value = graph.value(layer.input)
        if (
            isinstance(value, list)
            and isinstance(layer, PointwiseGroupConv2D)
            and layer.groups == len(value)
            and not layer.use_bias
            and layer.data_format == "channels_last"
        ):
            graph.set(layer.output, GroupwisePointwiseConv(layer)(value))
        elif is_plain_batch_norm(layer):
            graph.call(layer, FastBatchNormalization(layer))
        elif fuse and (tiled := tiled_normalization(layer)) is not None:
            scale, offset = (c.tolist() for c in tiled)
            graph.call(
                layer, keras.layers.Rescaling(scale, offset, name=layer.name)
            )
        else:
            graph.call(layer)
    return graph.model(f"{model.name}_training")
