"""A QAT model's biases on the int32 grid the integer kernels add them on."""

import numpy as np
import tf_keras

from keras_shufflenet.qat.graph import kernel_range_variables
from keras_shufflenet.qat.graph import producers
from keras_shufflenet.qat.graph import range_variables

# Symmetric narrow-range int8 weights span [-127, 127]; activations 256
# levels.
_WEIGHT_LEVELS = 254
_ACTIVATION_LEVELS = 255


def snap_biases(model):
    """Moves each bias of a QAT model onto its integer kernel's grid.

    The converter folds a batch norm into the convolution before it and
    stores the bias in int32 with scale `input scale * weight scale`, per
    output channel (Jacob et al., section 2.4); tfmot's simulation adds it
    in float. Off that grid by up to half its step, an output channel is
    shifted by up to about 1% of an output step, which turns that
    fraction of its roundings; over the units those single-step turns add
    up to several steps of the logits. Snapped, the QAT model adds what
    the integer kernel adds, and the two differ only where float32 sums
    lie within rounding of a step boundary. The conversion does not
    change: it rounds either bias to the same integer.

    Call it after fine-tuning, before evaluating or converting (the
    weight ranges it reads are the last training step's); it is
    idempotent. Batch norms are frozen during QAT, so the betas it moves
    are not trained afterwards.

    Reference:
        Jacob et al., "Quantization and Training of Neural Networks for
        Efficient Integer-Arithmetic-Only Inference", section 2.4 (the
        int32 bias, scale S1 * S2, zero point 0).

    Args:
        model: A `qat_model`.

    Returns:
        The largest move of a bias, in steps of its grid (at most 0.5).

    Raises:
        ValueError: A convolution's input has no range before it.
    """
    feeds = producers(model)
    largest = 0.0
    folded = set()
    for wrapper in model.layers:
        norm = getattr(wrapper, "layer", None)
        if not isinstance(norm, tf_keras.layers.BatchNormalization):
            continue
        conv = feeds[id(wrapper.input)]
        if not kernel_range_variables(conv):
            continue  # No convolution to fold into: not an int8 bias.
        folded.add(conv.name)
        gamma, beta, mean, variance = (
            v.numpy().astype("float64")
            for v in (norm.gamma, norm.beta, norm.moving_mean,
                      norm.moving_variance)
        )
        factor = gamma / np.sqrt(variance + norm.epsilon)
        bias = beta - mean * factor
        if getattr(conv.layer, "use_bias", False):
            bias += conv.layer.bias.numpy() * factor
        grid = _input_scale(conv, feeds) * _weight_scale(conv) * abs(factor)
        largest = max(largest, _snap(norm.beta, bias, grid))
    for conv in model.layers:
        if (
            conv.name in folded
            or not kernel_range_variables(conv)
            or not getattr(conv.layer, "use_bias", False)
        ):
            continue
        grid = _input_scale(conv, feeds) * _weight_scale(conv)
        bias = conv.layer.bias.numpy().astype("float64")
        largest = max(largest, _snap(conv.layer.bias, bias, grid))
    return largest


def _weight_scale(conv):
    low, high = (
        v.numpy().astype("float64") for v in kernel_range_variables(conv)
    )
    return (high - low) / _WEIGHT_LEVELS


def _input_scale(conv, feeds):
    """The scale of the int8 tensor `conv` reads."""
    layer = conv
    while True:
        inputs = layer.input
        if isinstance(inputs, (list, tuple)):
            raise ValueError(
                f"Layer {conv.name!r}: its input comes from "
                f"{layer.name!r}, which joins several tensors without a "
                "range of its own; the int32 bias grid is unknown."
            )
        producer = feeds[id(inputs)]
        if producer is layer:  # The model's input.
            raise ValueError(
                f"Layer {conv.name!r}: no quantizer lies between it and "
                "the model's input; the int32 bias grid is unknown."
            )
        layer = producer
        found = range_variables(layer)
        if found:
            low, high = (float(v.numpy()) for v in found)
            return (high - low) / _ACTIVATION_LEVELS
        # A padding, a max pool or a reshape passes int8 values on.


def _snap(variable, bias, grid):
    """Moves `variable` by what puts `bias` on `grid`; the move in steps."""
    on_grid = grid > 0  # A zero weight scale leaves its bias as it is.
    steps = bias / np.where(on_grid, grid, 1.0)
    offset = np.where(on_grid, np.round(steps) - steps, 0.0)
    variable.assign((variable.numpy() + offset * grid).astype("float32"))
    return float(np.max(np.abs(offset), initial=0.0))
