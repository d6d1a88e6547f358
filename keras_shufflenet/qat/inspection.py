"""Where a converted QAT model departs from the QAT Keras model, layer by
layer, in int8 steps."""

import numpy as np
import tensorflow as tf

from keras_shufflenet.lite import make_interpreter


def layer_steps(model, tflite, images):
    """How far each layer of a converted QAT model is from the QAT model.

    Fake quantization computes a layer in float on quantized inputs and
    rounds once; the integer kernels accumulate in int32 and requantize
    with a fixed-point multiplier. The two agree except where a value
    lies within rounding of a step boundary, so a layer whose ranges the
    converter took from QAT differs by at most one step from its inputs'
    differences; those differences then add up over the units. A layer
    the converter quantized with a range QAT did not learn, or computes
    differently, stands out as a jump.

    Reference:
        Jacob et al., "Quantization and Training of Neural Networks for
        Efficient Integer-Arithmetic-Only Inference", section 2.2 (integer
        requantization) and section 3 (simulated quantization).

    Args:
        model: A `qat_model`.
        tflite: Its conversion (`convert_qat`), `.tflite` bytes or path.
        images: Images `[n, height, width, 3]` as the model takes them.

    Returns:
        A dict, in graph order, from the name of each layer whose output
        the TFLite model holds as a per-tensor int8 tensor to the largest
        difference over `images`, in steps of that tensor's scale.
    """
    interpreter = make_interpreter(
        tflite, delegate=False, preserve_all_tensors=True
    )
    (source,) = interpreter.get_input_details()
    names = {
        layer.name: getattr(layer, "layer", layer).name
        for layer in model.layers[1:]
    }
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
    probe = type(model)(model.input, [layer.output for layer in wrappers])
    # One batched pass for the Keras side; the TFLite model takes batch 1.
    expected = [
        np.asarray(v) for v in tf.nest.flatten(probe(images, training=False))
    ]
    steps = {names[layer.name]: 0.0 for layer in wrappers}
    for i, image in enumerate(images):
        interpreter.set_tensor(source["index"], image[None])
        interpreter.invoke()
        for layer, values in zip(wrappers, expected):
            tensor = found[layer.name]
            scale, zero_point = tensor["quantization"]
            got = interpreter.get_tensor(tensor["index"])[0].astype("float32")
            difference = np.abs((got - zero_point) * scale - values[i])
            steps[names[layer.name]] = max(
                steps[names[layer.name]], float(difference.max() / scale)
            )
    return steps
