"""Numerical verification of a converted model against its Keras source,
and accuracy of TFLite models on a dataset.
"""

import json
import os
import tempfile
import warnings

import numpy as np

from keras_shufflenet.lite.conversion import convert_saved_model
from keras_shufflenet.lite.conversion import quantize_with_ai_edge_quantizer
from keras_shufflenet.lite.inspection import PASS_THROUGH_OPS
from keras_shufflenet.lite.inspection import make_interpreter
from keras_shufflenet.lite.inspection import model_bytes
from keras_shufflenet.lite.inspection import op_name
from keras_shufflenet.lite.inspection import read_flatbuffer
from keras_shufflenet.lite.inspection import xnnpack_coverage
from keras_shufflenet.lite.saved_model import export_saved_model
from keras_shufflenet.lite.saved_model import logits_model
from keras_shufflenet.lite.tflite_converter import check_images
from keras_shufflenet.utils.checks import check_choice
from keras_shufflenet.utils.files import write_atomic
from keras_shufflenet.utils.plots import pyplot
from keras_shufflenet.utils.plots import write_figure


def _quantize_input(images, detail):
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return images.astype(np.float32)
    scale, zero_point = detail["quantization"]
    if dtype == images.dtype and abs(scale - 1.0) < 1e-6 and zero_point == 0:
        return images
    info = np.iinfo(dtype)
    q = np.round(images.astype(np.float32) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize_output(values, detail):
    if np.dtype(detail["dtype"]) == np.float32:
        return values
    scale, zero_point = detail["quantization"]
    return (values.astype(np.float32) - zero_point) * scale


class TFLiteModel:
    """Runs a single-input, single-output `.tflite` image classifier.

    Float pixel values go in whatever the model's input type: they are
    quantized with the input tensor's scale and zero point when it is
    int8/uint8 (uint8 frames pass unchanged when the scale is 1), and an
    int8 output is dequantized, so results compare directly with Keras.

    Args:
        tflite: `.tflite` bytes or path.
        num_threads: Interpreter threads. Defaults to 1.
        delegate: Apply LiteRT's default XNNPACK delegate, falling back to
            the builtin kernels with a warning when XNNPACK cannot prepare
            the model (`self.delegated` says which ran). Defaults to True.
    """

    def __init__(self, tflite, num_threads=1, delegate=True):
        self.delegated = delegate
        try:
            self._interpreter = make_interpreter(tflite, delegate, num_threads)
        except RuntimeError as e:
            if not delegate:
                raise
            warnings.warn(
                f"XNNPACK failed to prepare this model ({e}); running it on "
                "TFLite's builtin kernels instead. See "
                "`xnnpack_scale_violations` and float_layers=['auto'].",
                stacklevel=2,
            )
            self.delegated = False
            self._interpreter = make_interpreter(tflite, False, num_threads)
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                "Expected a model with one input and one output. "
                f"Received: {len(inputs)} inputs, {len(outputs)} outputs"
            )
        self.input_detail = inputs[0]
        self.output_detail = outputs[0]

    @property
    def image_size(self):
        return tuple(int(s) for s in self.input_detail["shape"][1:3])

    def __call__(self, images):
        """Returns float32 outputs `[n, classes]` for images `[n, h, w, 3]`."""
        images = check_images(images, self.image_size, "images")
        outputs = []
        for image in images:
            x = _quantize_input(image[np.newaxis], self.input_detail)
            self._interpreter.set_tensor(self.input_detail["index"], x)
            self._interpreter.invoke()
            y = self._interpreter.get_tensor(self.output_detail["index"])
            outputs.append(_dequantize_output(y, self.output_detail))
        return np.concatenate(outputs)


def outputs_softmax(tflite):
    """Whether the model's output is computed by a SOFTMAX op.

    Looks through DEQUANTIZE/QUANTIZE/RESHAPE at the output.

    Args:
        tflite: `.tflite` bytes or path.

    Returns:
        True when the output holds probabilities, False for logits.
    """
    return _output_chain(tflite)[1] == "SOFTMAX"


def output_step(tflite):
    """The quantization step of a model's output.

    The scale of the output tensor when it is quantized, or of the
    quantized tensor a final DEQUANTIZE (RESHAPE, QUANTIZE) reads.

    Args:
        tflite: `.tflite` bytes or path.

    Returns:
        The step as a float, or None for a float output.
    """
    for quantization in _output_chain(tflite)[0]:
        if quantization is not None and quantization.scale is not None:
            if len(quantization.scale) == 1:
                return float(quantization.scale[0])
    return None


def _output_chain(tflite):
    """`(quantization of each tensor from the output back through
    PASS_THROUGH_OPS, name of the op that computes it)`."""
    model = read_flatbuffer(model_bytes(tflite))
    subgraph = model.subgraphs[0]
    producer = {t: op for op in subgraph.operators for t in op.outputs}
    tensor = subgraph.outputs[0]
    chain = [subgraph.tensors[tensor].quantization]
    while tensor in producer:
        op = producer[tensor]
        name = op_name(model, op.opcodeIndex)
        if name not in PASS_THROUGH_OPS:
            return chain, name
        tensor = op.inputs[0]
        chain.append(subgraph.tensors[tensor].quantization)
    return chain, None


def compare_outputs(reference, outputs, labels=None, step=None):
    """Compares TFLite outputs with Keras outputs of the same images.

    Args:
        reference: Keras outputs `[n, classes]`.
        outputs: TFLite outputs `[n, classes]`.
        labels: Optional int labels `[n]` for top-1 accuracy.
        step: Optional quantization step of the TFLite output
            (`output_step`), to count differences in steps: for a model
            whose Keras twin simulates its quantization (QAT).

    Returns:
        A dict: `num_examples`, `top1_agreement` (fraction with the same
        argmax), `max_abs_diff`, `max_rel_diff` (max|a - b| / max|a| over
        all examples, a = Keras); with labels `keras_top1` and
        `tflite_top1` accuracies; with `step`, `steps_equal` and
        `steps_within_two` (the fractions of values that differ by less
        than half a step, and by at most two) and `max_steps`.
    """
    reference = np.asarray(reference, np.float32)
    outputs = np.asarray(outputs, np.float32)
    if reference.shape != outputs.shape:
        raise ValueError(
            f"Output shapes differ: Keras {reference.shape}, TFLite "
            f"{outputs.shape}"
        )
    diff = float(np.max(np.abs(reference - outputs)))
    result = {
        "num_examples": int(len(reference)),
        "top1_agreement": float(
            np.mean(reference.argmax(-1) == outputs.argmax(-1))
        ),
        "max_abs_diff": diff,
        "max_rel_diff": diff / max(float(np.max(np.abs(reference))), 1e-30),
    }
    if labels is not None:
        labels = np.asarray(labels)
        result["keras_top1"] = float(np.mean(reference.argmax(-1) == labels))
        result["tflite_top1"] = float(np.mean(outputs.argmax(-1) == labels))
    if step is not None:
        steps = np.abs(reference - outputs) / step
        result["steps_equal"] = float(np.mean(steps < 0.5))
        result["steps_within_two"] = float(np.mean(steps < 2.5))
        result["max_steps"] = float(np.round(steps.max()))
    return result


def evaluate_tflite(
    tflite,
    dataset,
    keras_model=None,
    *,
    max_examples=None,
    num_threads=1,
    progress=None,
):
    """Runs a `.tflite` over an evaluation dataset, optionally vs Keras.

    The Keras model is compared at the same output as the TFLite model:
    logits when the `.tflite` has no final softmax (see `logits_model`),
    probabilities otherwise.

    Reference:
        Zhang et al., ShuffleNet, section 4 (single-crop top-1).

    Args:
        tflite: `.tflite` bytes or path.
        dataset: Batches `(images, labels)` or `(images, labels,
            sample_weight)` as `keras_shufflenet.data` gives for
            evaluation; rows with weight 0 (padding) are skipped.
        keras_model: The source Keras model. Defaults to None (TFLite
            top-1 only).
        max_examples: Stop after this many examples. Defaults to all.
        num_threads: Interpreter threads. Defaults to 1.
        progress: Optional callable `progress(done)` called per batch.

    Returns:
        A dict with `tflite_top1` and `num_examples`, plus
        `compare_outputs`' fields when `keras_model` is given (with the
        differences in output steps for a quantized output).
    """
    runner = TFLiteModel(tflite, num_threads=num_threads)
    reference_model = None
    if keras_model is not None:
        reference_model = keras_model
        if not outputs_softmax(tflite):
            reference_model = logits_model(keras_model)
    tflite_out, keras_out, labels = [], [], []
    done = 0
    for images, batch_labels in _examples(dataset, max_examples):
        tflite_out.append(runner(images))
        if reference_model is not None:
            keras_out.append(
                np.asarray(reference_model(images.astype(np.float32),
                                           training=False))
            )
        labels.append(batch_labels)
        done += len(images)
        if progress is not None:
            progress(done)
    if not done:
        raise ValueError("`dataset` yielded no examples.")
    outputs = np.concatenate(tflite_out)
    labels = np.concatenate(labels)
    if reference_model is None:
        return {
            "num_examples": done,
            "tflite_top1": float(np.mean(outputs.argmax(-1) == labels)),
        }
    return compare_outputs(
        np.concatenate(keras_out), outputs, labels, output_step(tflite)
    )


# Named conversions compared by `compare_conversions`: the modes and the
# known post-training-quantization fixes and alternatives.
CONVERSION_VARIANTS = {
    "float32": {"mode": "float32"},
    "float16": {"mode": "float16"},
    "dynamic": {"mode": "dynamic"},
    "int8": {"mode": "int8", "input_type": "int8"},
    "int8_uint8_in": {"mode": "int8", "input_type": "uint8"},
    "int8_per_tensor": {
        "mode": "int8", "input_type": "int8", "per_channel": False,
    },
    "int8_float_first_last": {
        "mode": "int8", "float_layers": ["first", "last"],
    },
    "int8_float_auto": {"mode": "int8", "float_layers": ["auto"]},
    "int16x8": {"mode": "int16x8"},
    "ai_edge_quantizer_int8": {"quantizer": "ai_edge_quantizer"},
}


def _examples(dataset, max_examples):
    """Yields `(images, labels)` numpy batches of real examples: padding
    rows (sample weight 0) dropped, at most `max_examples` in all."""
    limit = float("inf") if max_examples is None else max_examples
    done = 0
    for batch in dataset:
        if done >= limit:
            return
        images, labels = np.asarray(batch[0]), np.asarray(batch[1])
        if len(batch) > 2:
            keep = np.asarray(batch[2]) > 0
            images, labels = images[keep], labels[keep]
        room = int(min(len(images), limit - done))
        if room:
            yield images[:room], labels[:room]
            done += room


def _collect(dataset, max_examples):
    batches = list(_examples(dataset, max_examples))
    if not batches:
        raise ValueError("`dataset` yielded no examples.")
    images, labels = zip(*batches)
    return np.concatenate(images), np.concatenate(labels)


def compare_conversions(
    model,
    dataset,
    *,
    calibration_data=None,
    variants=None,
    image_size=None,
    max_examples=None,
    num_threads=1,
    progress=None,
):
    """Converts `model` several ways and measures each against Keras.

    All variants output logits (the softmax is dropped) and are compared
    with the Keras logits on the same images: top-1 of each, their top-1
    agreement, the largest relative logit difference, size and XNNPACK
    pieces.

    Reference:
        Zhang et al., ShuffleNet, section 4 (single-crop top-1).

    Args:
        model: The Keras model.
        dataset: Evaluation batches `(images, labels[, sample_weight])`.
        calibration_data: Images for the int8 variants (see
            `calibration_images`).
        variants: Names from `CONVERSION_VARIANTS`. Defaults to all.
        image_size: Export side. Defaults to the model's input size.
        max_examples: Evaluate at most this many examples. Defaults to
            all.
        num_threads: Interpreter threads. Defaults to 1.
        progress: Optional callable `progress(message)`.

    Returns:
        A list of dicts, one per variant: `variant`, `size_bytes`,
        `compare_outputs` fields, `xnnpack_pieces` and `ops_left_out`.
    """
    variants = list(variants or CONVERSION_VARIANTS)
    for name in variants:
        check_choice("variants", name, tuple(CONVERSION_VARIANTS))
    progress = progress or (lambda message: None)
    logits = logits_model(model)
    images, labels = _collect(dataset, max_examples)
    progress(f"Keras logits of {len(images)} images")
    reference = np.concatenate(
        [
            np.asarray(logits(images[i : i + 32].astype(np.float32),
                              training=False))
            for i in range(0, len(images), 32)
        ]
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # Every mode converts the same graph.
        saved_model = os.path.join(tmp, "saved_model")
        export_saved_model(logits, saved_model, image_size)

        for name in variants:
            kwargs = dict(CONVERSION_VARIANTS[name])
            progress(f"Converting {name}")
            if kwargs.pop("quantizer", None) == "ai_edge_quantizer":
                # The quantizer takes a float model: the integer graph's.
                float32 = convert_saved_model(saved_model)
                tflite = quantize_with_ai_edge_quantizer(
                    float32, calibration_data
                )
            else:
                if kwargs["mode"] in ("int8", "int16x8"):
                    kwargs["calibration_data"] = calibration_data
                tflite = convert_saved_model(saved_model, **kwargs)
            progress(f"Evaluating {name}")
            outputs = TFLiteModel(tflite, num_threads=num_threads)(images)
            coverage = xnnpack_coverage(tflite)
            rows.append(
                {
                    "variant": name,
                    "size_bytes": len(tflite),
                    **compare_outputs(reference, outputs, labels),
                    "xnnpack_pieces": coverage["pieces"],
                    "ops_left_out": coverage["ops_left_out"],
                }
            )
    return rows


def format_conversion_table(rows):
    """Renders `compare_conversions` rows as a plain-text table.

    Args:
        rows: A list of dicts from `compare_conversions`.

    Returns:
        A multi-line string.
    """
    header = (
        f"{'variant':<24}{'KiB':>8}{'top-1':>8}{'Keras':>8}{'agree':>8}"
        f"{'max rel':>10}{'pieces':>8}  left out"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        left = ", ".join(f"{k} x{v}" for k, v in r["ops_left_out"].items())
        lines.append(
            f"{r['variant']:<24}{r['size_bytes'] / 1024:>8.1f}"
            f"{100 * r['tflite_top1']:>7.2f}%{100 * r['keras_top1']:>7.2f}%"
            f"{100 * r['top1_agreement']:>7.2f}%{r['max_rel_diff']:>10.2e}"
            f"{str(r['xnnpack_pieces']):>8}  {left or '-'}"
        )
    return "\n".join(lines)


def plot_conversions(rows, path, title=""):
    """Saves a PNG: top-1 agreement, logit error and size per variant.

    Args:
        rows: A list of dicts from `compare_conversions`.
        path: The PNG to write.
        title: Figure title. Defaults to "".
    """
    plt = pyplot()

    names = [r["variant"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(rows) + 1.5),
                             sharey=True)
    panels = (
        ("top-1 agreement with Keras (%)",
         [100 * r["top1_agreement"] for r in rows]),
        ("max relative logit difference",
         [max(r["max_rel_diff"], 1e-9) for r in rows]),
        ("size (KiB)", [r["size_bytes"] / 1024 for r in rows]),
    )
    for ax, (label, values) in zip(axes, panels):
        ax.barh(names, values, color="tab:blue")
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[1].set_xscale("log")
    axes[0].invert_yaxis()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    write_figure(fig, path)


def format_evaluation(results):
    """Renders `evaluate_tflite` results as plain text.

    Args:
        results: A dict from `evaluate_tflite`.

    Returns:
        A multi-line string.
    """
    lines = [f"  examples         {results['num_examples']}"]
    lines.append(f"  TFLite top-1     {100 * results['tflite_top1']:.2f}%")
    if "keras_top1" in results:
        lines += [
            f"  Keras top-1      {100 * results['keras_top1']:.2f}%",
            f"  top-1 agreement  {100 * results['top1_agreement']:.2f}%",
            f"  max |diff|       {results['max_abs_diff']:.3g}",
            f"  max rel. diff    {results['max_rel_diff']:.3g}",
        ]
    return "\n".join(lines)


def write_report(report, path):
    """Writes a report dict as JSON, atomically.

    Args:
        report: A JSON-serialisable dict, e.g. from `model_report`.
        path: Destination file.
    """
    write_atomic(path, (json.dumps(report, indent=2) + "\n").encode())
