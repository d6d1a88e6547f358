"""Walking a QAT model's graph: which layer feeds which, and where an int8
tensor's range lives."""

import tensorflow as tf

# tfmot names the range of a layer's quantized output `output_min/max`
# (an output quantizer) or `..._activation_min/max` (an activation's).
_OUTPUT_RANGES = (
    "output_min:0", "output_max:0", "activation_min:0", "activation_max:0"
)


def producers(model):
    """Maps `id(tensor)` to the layer of `model` that outputs it."""
    return {
        id(tensor): layer
        for layer in model.layers
        for tensor in tf.nest.flatten(layer.output)
    }


def range_variables(layer):
    """The `(min, max)` variables of the quantizer on a layer's output.

    Args:
        layer: A layer of a `qat_model`: its `QuantizeLayer` or a tfmot
            wrapper.

    Returns:
        A list: `[min, max]`, or empty where the layer passes its input's
        int8 values on (a padding, a max pool, a reshape).
    """
    if type(layer).__name__ == "QuantizeLayer":
        suffixes = ("_min:0", "_max:0")
    else:
        suffixes = _OUTPUT_RANGES
    return _min_then_max(
        v for v in layer.weights if v.name.endswith(suffixes)
    )


def kernel_range_variables(layer):
    """The `(min, max)` variables of a wrapper's kernel quantizer (one
    value per channel, or one), or empty where it quantizes no kernel."""
    return _min_then_max(
        v for v in layer.weights
        if v.name.endswith(("kernel_min:0", "kernel_max:0"))
    )


def _min_then_max(variables):
    return sorted(variables, key=lambda v: not v.name.endswith("min:0"))
