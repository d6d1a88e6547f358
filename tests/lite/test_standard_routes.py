"""The standard conversions give ShuffleNet's fast graph: Keras'
`model.export(format="litert")` and SavedModel + `TFLiteConverter`, with
no dynamic-shape ops, in one XNNPACK piece, equal to Keras."""

import collections

import numpy as np
import pytest

import keras_shufflenet as ks
from keras_shufflenet import lite

SIZE = 64
SHAPE_OPS = ("SHAPE", "STRIDED_SLICE", "PACK")


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def run(tflite, x):
    interpreter = lite.make_interpreter(tflite)
    (given,) = interpreter.get_input_details()
    if tuple(given["shape"]) != x.shape:
        interpreter.resize_tensor_input(given["index"], x.shape)
        interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], x)
    interpreter.invoke()
    (output,) = interpreter.get_output_details()
    return interpreter.get_tensor(output["index"])


def relative_error(got, expected):
    return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


# Every unit of a variant has the same structure, so the other variants
# are shallow (Table 5's half depth: half the export time) and g4 carries
# SE; g3 keeps Table 1's depth.
VARIANTS = {
    "g1-shallow": dict(groups=1, shallow=True),
    "g2-shallow": dict(groups=2, shallow=True),
    "g3": dict(groups=3),
    "g4-se-shallow": dict(groups=4, se=True, shallow=True),
    "g8-shallow": dict(groups=8, shallow=True),
}


_EXPORTED = {}


def exported(variant, directory):
    """`(model, path)`: the variant and its `model.export` conversion, once
    per test process (a conversion takes 10-20 s, mostly TF tracing)."""
    if variant not in _EXPORTED:
        model = ks.ShuffleNet(
            0.25, input_shape=(SIZE, SIZE, 3), classes=10,
            classifier_activation=None, **VARIANTS[variant],
        )
        path = lite.export_litert(model, str(directory / f"{variant}.tflite"))
        _EXPORTED[variant] = (model, path)
    return _EXPORTED[variant]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_keras_litert_export_is_the_one_piece_graph(variant, tmp_path):
    model, path = exported(variant, tmp_path)
    ops = collections.Counter(lite.op_list(path))
    assert not any(ops[op] for op in SHAPE_OPS), ops
    report = lite.model_report(path)
    assert report["max_tensor_rank"] == 4
    assert report["xnnpack"]["pieces"] == 1
    if variant == "g3":
        # The shortcut pools are depthwise convs, every batch norm and the
        # branch ReLU fold into convolutions, the normalisation is one
        # MUL+ADD, each shuffle one TRANSPOSE.
        assert "AVERAGE_POOL_2D" not in ops
        assert "RELU" not in ops and "SUB" not in ops
        assert ops["DEPTHWISE_CONV_2D"] == 16 + 3
        assert ops["TRANSPOSE"] == 16
        assert ops["CONV_2D"] == 1 + 2 * 16
    # The dynamic batch dimension survives and runs at any batch size.
    x = images(8)
    expected = np.asarray(model.predict(x, verbose=0))
    assert relative_error(run(path, x[:1]), expected[:1]) <= 1e-5
    assert relative_error(run(path, x), expected) <= 1e-5


def test_both_standard_routes_and_convert_give_the_same_ops(tmp_path):
    model, litert = exported("g2-shallow", tmp_path)
    converter = lite.convert_with_tflite_converter(
        model, str(tmp_path / "converter.tflite")
    )
    ours = lite.convert(model)
    assert lite.op_list(litert) == lite.op_list(ours)
    assert lite.op_list(converter) == lite.op_list(ours)
    x = images(2)
    assert relative_error(run(converter, x), model.predict(x, verbose=0)) <= 1e-5


def test_int8_the_standard_way_is_one_piece_of_builtin_int8_ops(tmp_path):
    model = ks.ShuffleNet(
        0.25, 3, shallow=True, input_shape=(SIZE, SIZE, 3), classes=10,
        classifier_activation=None,
    )
    path = lite.export_litert(
        model, str(tmp_path / "int8.tflite"), "int8", images(2)
    )
    ops = collections.Counter(lite.op_list(path))
    assert not any(ops[op] for op in SHAPE_OPS), ops
    # Float in and out, int8 inside: one QUANTIZE and one DEQUANTIZE.
    assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 1
    lite.check_builtin_ops(path)
    assert lite.xnnpack_coverage(path)["pieces"] == 1
    ours = lite.convert(model, mode="int8", calibration_data=images(2))
    assert sorted(lite.op_list(path)) == sorted(lite.op_list(ours))
    with pytest.raises(ValueError, match="`calibration_data` is needed"):
        lite.export_litert(model, str(tmp_path / "x.tflite"), "int8")


def test_every_sources_layout_exports_to_the_same_one_piece_graph(tmp_path):
    """Weights of pytorchcv, mmpretrain or the official release need a
    classifier bias, another stem width, the branch first in a stride-2
    concatenation, the release's shuffle order or no normalisation layer;
    each model still exports, float and int8, to the one-piece graph."""
    model = ks.ShuffleNet(
        0.25, 3, shallow=True, input_shape=(SIZE, SIZE, 3), classes=10,
        classifier_activation=None, concat_order="branch_first",
        classifier_bias=True, stem_width=6, shuffle_order="official",
        include_preprocessing=False,
    )
    path = lite.export_litert(model, str(tmp_path / "sources.tflite"))
    ops = collections.Counter(lite.op_list(path))
    assert not any(ops[op] for op in SHAPE_OPS), ops
    assert "AVERAGE_POOL_2D" not in ops and "RELU" not in ops
    assert ops["DEPTHWISE_CONV_2D"] == 8 + 3 and ops["TRANSPOSE"] == 8
    assert lite.xnnpack_coverage(path)["pieces"] == 1
    x = images(2)
    assert relative_error(run(path, x), model.predict(x, verbose=0)) <= 1e-5
    int8 = lite.convert(model, mode="int8", calibration_data=images(2))
    lite.check_builtin_ops(int8)
    assert lite.xnnpack_coverage(int8)["pieces"] == 1
