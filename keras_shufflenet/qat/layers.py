"""The `tf_keras` layers and tfmot quantize configs of the twin
(`qat.twin`): what the converter needs that tfmot's defaults do not give,
and what `tf_keras` needs to load a twin or its QAT model
(`CUSTOM_OBJECTS`).
"""

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras

from keras_shufflenet.models.lowering import row_zero_padding

QUANTIZE = tfmot.quantization.keras
LAYERS = tf_keras.layers
QAT_PACKAGE = "keras_shufflenet_qat"


@tf_keras.saving.register_keras_serializable(package=QAT_PACKAGE)
class ConstantOperand(LAYERS.Layer):
    """Multiplies or adds a constant, broadcast over the input.

    The tiled image normalisation is `x * scale + offset`; as two of these
    layers, QAT gives each constant and each output its own 8-bit range,
    as the converter's MUL and ADD need (see `ConstantOperandQuantizeConfig`).

    Args:
        operation: `"multiply"` or `"add"`.
        value: The constant, broadcastable to the input.
        **kwargs: Base layer arguments.
    """

    def __init__(self, operation, value, **kwargs):
        super().__init__(**kwargs)
        if operation not in ("multiply", "add"):
            raise ValueError(
                "`operation` must be 'multiply' or 'add'. Received: "
                f"operation={operation!r}"
            )
        self.operation = operation
        self.initial_value = np.asarray(value, "float32")

    def build(self, input_shape):
        self.value = self.add_weight(
            name="value",
            shape=self.initial_value.shape,
            initializer=tf_keras.initializers.Constant(self.initial_value),
            trainable=False,
        )
        super().build(input_shape)

    def call(self, inputs):
        if self.operation == "multiply":
            return inputs * self.value
        return inputs + self.value

    def get_config(self):
        config = super().get_config()
        config.update(
            operation=self.operation, value=self.initial_value.tolist()
        )
        return config


@tf_keras.saving.register_keras_serializable(package=QAT_PACKAGE)
class RowZeroPadding(LAYERS.Layer):
    """Zero-pads an image as rows of `width * channels` values.

    The `tf_keras` form of `models.lowering.RowZeroPadding2D`'s inference
    graph: RESHAPE to `(batch, height, width * channels)`, PAD, RESHAPE
    back. A rank-4 padding of `(height, width * channels, 1)` would name
    the same ops, but XNNPACK copies its one-value innermost rows one by
    one (tflite/README.md, "PTQ or QAT").

    Args:
        padding: `((top, bottom), (left, right))` in pixels.
        **kwargs: Base layer arguments.
    """

    def __init__(self, padding, **kwargs):
        super().__init__(**kwargs)
        self.padding = tuple(tuple(int(p) for p in pair) for pair in padding)

    def call(self, inputs):
        return row_zero_padding(inputs, self.padding)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        (top, bottom), (left, right) = self.padding
        return (batch, height + top + bottom, width + left + right, channels)

    def get_config(self):
        config = super().get_config()
        config["padding"] = self.padding
        return config


@tf_keras.saving.register_keras_serializable(package=QAT_PACKAGE)
class PassThroughQuantizeConfig(QUANTIZE.QuantizeConfig):
    """Quantizes nothing: the layer moves int8 values (a padding)."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


def _weight_quantizer(per_axis):
    # What the converter does: symmetric 8-bit weights, [-127, 127].
    return QUANTIZE.quantizers.LastValueQuantizer(
        num_bits=8, per_axis=per_axis, symmetric=True, narrow_range=True
    )


@tf_keras.saving.register_keras_serializable(package=QAT_PACKAGE)
class OutputQuantizeConfig(PassThroughQuantizeConfig):
    """Quantizes a layer's output (8-bit, per tensor, moving-average range),
    as the converter quantizes a MUL's or ADD's."""

    def get_output_quantizers(self, layer):
        return [
            QUANTIZE.quantizers.MovingAverageQuantizer(
                num_bits=8, per_axis=False, symmetric=False,
                narrow_range=False,
            )
        ]


@tf_keras.saving.register_keras_serializable(package=QAT_PACKAGE)
class ConstantOperandQuantizeConfig(OutputQuantizeConfig):
    """Quantizes a `ConstantOperand`'s constant (per tensor) and output."""

    def get_weights_and_quantizers(self, layer):
        return [(layer.value, _weight_quantizer(per_axis=False))]

    def set_quantize_weights(self, layer, quantize_weights):
        layer.value = quantize_weights[0]


@tf_keras.saving.register_keras_serializable(package=QAT_PACKAGE)
class SharedRangeQuantizeConfig(PassThroughQuantizeConfig):
    """Quantizes a depthwise kernel per channel and leaves the output to
    the concatenation it feeds.

    TFLite's int8 CONCATENATION needs one scale for its inputs and output,
    so the converter gives every input the concatenation's range. tfmot's
    default config would give the shortcut's pooling its own output range,
    which QAT then learns for nothing (tfmot issue #1053); here the output
    is quantized once, by the concatenation, as on device.

    Args:
        per_axis: One kernel scale per channel (else one). Defaults to
            True.
    """

    def __init__(self, per_axis=True):
        self.per_axis = per_axis

    def get_weights_and_quantizers(self, layer):
        return [
            (layer.depthwise_kernel, _weight_quantizer(self.per_axis))
        ]

    def set_quantize_weights(self, layer, quantize_weights):
        layer.depthwise_kernel = quantize_weights[0]

    def get_config(self):
        return {"per_axis": self.per_axis}


@tf_keras.saving.register_keras_serializable(package=QAT_PACKAGE)
class PerTensorDepthwiseQuantizeConfig(OutputQuantizeConfig):
    """Quantizes a depthwise kernel with one scale, and the output.

    For a depthwise conv with its batch norm folded in (`tf_keras_twin`'s
    `per_tensor_depthwise`): the kernel QAT rounds is the one the device
    runs, so the converter keeps its single scale.
    """

    def get_weights_and_quantizers(self, layer):
        return [(layer.depthwise_kernel, _weight_quantizer(per_axis=False))]

    def set_quantize_weights(self, layer, quantize_weights):
        layer.depthwise_kernel = quantize_weights[0]


# What `tf_keras` needs to load a twin or its QAT model.
CUSTOM_OBJECTS = {
    "ConstantOperand": ConstantOperand,
    "RowZeroPadding": RowZeroPadding,
    "PassThroughQuantizeConfig": PassThroughQuantizeConfig,
    "ConstantOperandQuantizeConfig": ConstantOperandQuantizeConfig,
    "OutputQuantizeConfig": OutputQuantizeConfig,
    "SharedRangeQuantizeConfig": SharedRangeQuantizeConfig,
    "PerTensorDepthwiseQuantizeConfig": PerTensorDepthwiseQuantizeConfig,
}
