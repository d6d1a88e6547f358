"""Where a converted QAT model departs from the QAT Keras model, layer by
layer, in int8 steps."""

import numpy as np
import tensorflow as tf

from keras_shufflenet.lite.inspection import make_interpreter
from keras_shufflenet.qat.graph import producers


def layer_steps(model, tflite, images, isolated=False):
    """How far each layer of a converted QAT model is from the QAT model.

    Fake quantization computes a layer in float on quantized inputs and
    rounds once; the integer kernels accumulate in int32 and requantize
    with a fixed-point multiplier. The two agree except where a value
    lies within rounding of a step boundary, so a layer whose ranges the
    converter took from QAT differs by at most one step from its inputs'
    differences; those differences then add up over the units. A layer
    the converter quantized with a range QAT did not learn, or computes
    differently, stands out as a jump.

    With `isolated`, each layer gets the TFLite model's own values of its
    inputs (of the nearest layers before it whose outputs the TFLite model
    holds) instead of the QAT model's, so each difference is that layer's
    alone: at most one step where the integer kernel computes what QAT
    simulates, whatever came before.

    Reference:
        Jacob et al., "Quantization and Training of Neural Networks for
        Efficient Integer-Arithmetic-Only Inference", section 2.2 (integer
        requantization) and section 3 (simulated quantization).

    Args:
        model: A `qat_model`.
        tflite: Its conversion (`convert_qat`), `.tflite` bytes or path.
        images: Images `[n, height, width, 3]` as the model takes them.
        isolated: Compare each layer on the TFLite model's inputs to it.
            Defaults to False (the QAT model's, through the whole network).

    Returns:
        A dict, in graph order, from the name of each layer whose output
        the TFLite model holds as a per-tensor int8 tensor to the largest
        difference over `images`, in steps of that tensor's scale.
    """
    interpreter = make_interpreter(
        tflite, delegate=False, preserve_all_tensors=True
    )
    (source,) = interpreter.get_input_details()
    shapes = {
        layer.name: tuple(layer.output.shape[1:])
        for layer in model.layers[1:]
    }
    found = {}
    for tensor in interpreter.get_tensor_details():
        scales = tensor["quantization_parameters"]["scales"]
        if tensor["dtype"] != np.int8 or len(scales) != 1:
            continue
        # A tensor is named after the ops it fuses, `;`-separated; the
        # first names the Keras layer (`.../quant_<layer>/...`).
        scopes = tensor["name"].split(";")[0].split("/")
        for scope in scopes:
            if tuple(tensor["shape"][1:]) == shapes.get(scope):
                # The layer's last int8 tensor of its shape: its output.
                found[scope] = tensor
                break
    wrappers = [layer for layer in model.layers[1:] if layer.name in found]
    held = {}  # The TFLite model's values, dequantized, by layer name.
    for image in images:
        interpreter.set_tensor(source["index"], image[None])
        interpreter.invoke()
        for layer in wrappers:
            tensor = found[layer.name]
            scale, zero_point = tensor["quantization"]
            value = interpreter.get_tensor(tensor["index"])[0]
            held.setdefault(layer.name, []).append(
                (value.astype("float32") - zero_point) * scale
            )
    held = {name: np.stack(values) for name, values in held.items()}
    if isolated:
        expected = _isolated_outputs(model, wrappers, held, images)
    else:
        # One batched pass; the TFLite model takes batch 1.
        probe = type(model)(model.input, [layer.output for layer in wrappers])
        expected = [
            np.asarray(v)
            for v in tf.nest.flatten(probe(images, training=False))
        ]
    steps = {}
    for layer, values in zip(wrappers, expected):
        scale = found[layer.name]["quantization"][0]
        difference = np.abs(held[layer.name] - values)
        steps[getattr(layer, "layer", layer).name] = float(
            difference.max() / scale
        )
    return steps


def _isolated_outputs(model, wrappers, held, images):
    """Each of `wrappers`' outputs, computed from the `held` values of its
    nearest held predecessors (the images for the model's input)."""
    feeds = producers(model)
    # Predecessors are found through the layers the TFLite model fuses
    # away (a convolution before its batch norm and ReLU).
    sources = {}

    def nearest_held(layer):
        if layer.name not in sources:
            found = []
            for tensor in tf.nest.flatten(layer.input):
                producer = feeds[id(tensor)]
                if producer.name in held or producer is model.layers[0]:
                    candidates = [producer]
                else:
                    candidates = nearest_held(producer)
                found += [p for p in candidates if p not in found]
            sources[layer.name] = found
        return sources[layer.name]

    outputs = []
    for layer in wrappers:
        inputs = nearest_held(layer)
        probe = type(model)([p.output for p in inputs], layer.output)
        feed = [
            held[p.name] if p.name in held else images for p in inputs
        ]
        outputs.append(np.asarray(probe(feed, training=False)))
    return outputs
