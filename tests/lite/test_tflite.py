"""Tests of TFLite conversion, quantization, reports and verification."""

import collections
import csv
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_shufflenet import ShuffleNet
from keras_shufflenet import data
from keras_shufflenet import lite
from keras_shufflenet.lite import evaluation
from keras_shufflenet.lite import inspection
from keras_shufflenet.lite import saved_model as lite_saved_model

SIZE = 64
CLASSES = 10

# The conversions are module fixtures: one worker builds them, once.
pytestmark = pytest.mark.xdist_group("tflite")


def _test_images(n, seed=0):
    """Pixel images with structure (blobs, gradients) spanning [0, 255]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    images = []
    for i in range(n):
        cy, cx, r = rng.uniform(0.2, 0.8, 3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.05 + r * 0.1))
        colour = rng.uniform(0, 1, 3)
        ramp = (xx if i % 2 else yy)[..., None] * rng.uniform(0, 1, 3)
        image = 255 * (0.6 * blob[..., None] * colour + 0.4 * ramp)
        images.append(image)
    images = np.clip(np.stack(images), 0, 255).astype(np.uint8)
    images[0, 0, 0] = 0  # The input range is exactly [0, 255].
    images[0, 0, 1] = 255
    return images


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """Two class folders of JPEGs like `_test_images`, at other sizes."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(1)
    for k, image in enumerate(_test_images(16, seed=5)):
        folder = root / "ab"[k % 2]
        os.makedirs(folder, exist_ok=True)
        h, w = rng.integers(70, 110, 2)
        Image.fromarray(image).resize((w, h), Image.BILINEAR).save(
            folder / f"{k}.jpg", quality=95
        )
    return root


@pytest.fixture(scope="module")
def calibration(jpeg_folder):
    config = data.InputConfig(
        source="folder", train_path=str(jpeg_folder), image_size=SIZE
    )
    # All 16 images: the set, hence the ranges, does not depend on the
    # order the parallel pipeline yields them in.
    return lite.calibration_images(config, num_images=16)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    # Table 5's half depth: every unit repeats one structure, and the
    # five conversions below take half the time.
    return ShuffleNet(
        0.25, 3, shallow=True, input_shape=(SIZE, SIZE, 3), classes=CLASSES,
        classifier_activation=None,
    )


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "saved_model"
    lite.export_saved_model(model, path)
    return path


@pytest.fixture(scope="module")
def converted(saved_model, calibration):
    """One conversion per mode, shared by the tests below."""
    cases = {
        "float32": {},
        "float16": {"mode": "float16"},
        "dynamic": {"mode": "dynamic"},
        "int8": {"mode": "int8", "input_type": "int8"},
        "int8_uint8_in": {
            "mode": "int8", "input_type": "uint8", "output_type": "int8",
        },
    }
    return {
        name: lite.convert_saved_model(
            saved_model, calibration_data=calibration, **kwargs
        )
        for name, kwargs in cases.items()
    }


@pytest.fixture(scope="module")
def images():
    return _test_images(16)


@pytest.fixture(scope="module")
def keras_logits(model, images):
    return model.predict(images.astype(np.float32), verbose=0)


def test_calibration_images_are_eval_pipeline_centre_crops(jpeg_folder):
    config = data.InputConfig(
        source="folder", eval_path=str(jpeg_folder), image_size=SIZE
    )
    got = lite.calibration_images(config, num_images=5, split="eval")
    assert got.shape == (5, SIZE, SIZE, 3) and got.dtype == np.uint8
    expected = [
        data.preprocess_for_eval(
            tf.io.read_file(str(path)), SIZE
        ).numpy()
        for path in sorted(jpeg_folder.glob("*/*.jpg"))
    ]
    for image in got:
        assert any(np.array_equal(image, e) for e in expected)


def test_float32_matches_keras_logits_within_1e4(converted, images,
                                                 keras_logits):
    outputs = lite.TFLiteModel(converted["float32"])(images)
    result = lite.compare_outputs(keras_logits, outputs)
    assert result["max_rel_diff"] <= 1e-4
    assert result["top1_agreement"] == 1.0


def test_float32_of_a_dynamic_size_model_matches_keras_and_writes_the_file(
    images, tmp_path
):
    keras.utils.set_random_seed(1)
    # (g8 and SE at a static size: tests/lite/test_standard_routes.py.)
    model = ShuffleNet(
        0.25, 8, shallow=True, input_shape=(None, None, 3), classes=CLASSES,
        classifier_activation=None,
    )
    path = tmp_path / "out" / "g8_shallow.tflite"
    tflite = lite.convert(model, path, image_size=SIZE)
    assert path.read_bytes() == tflite
    reference = model.predict(images[:8].astype(np.float32), verbose=0)
    result = lite.compare_outputs(
        reference, lite.TFLiteModel(str(path))(images[:8])
    )
    assert result["max_rel_diff"] <= 1e-4
    assert result["top1_agreement"] == 1.0
    report = lite.model_report(str(path))
    assert report["inputs"][0]["shape"] == [1, SIZE, SIZE, 3]
    assert report["outputs"][0]["shape"] == [1, CLASSES]
    assert report["xnnpack"]["pieces"] == 1
    assert "XNNPACK pieces  1 " in lite.format_report(report)


def test_float16_halves_size_and_stays_close(converted, images,
                                             keras_logits):
    outputs = lite.TFLiteModel(converted["float16"])(images)
    result = lite.compare_outputs(keras_logits, outputs)
    # float16 weights carry ~11 bits: errors of order 1e-3, not 1e-7.
    assert result["max_rel_diff"] <= 5e-3
    assert result["top1_agreement"] == 1.0
    assert len(converted["float16"]) < 0.65 * len(converted["float32"])


def test_dynamic_range_and_int8_agree_with_float(converted, images,
                                                 keras_logits):
    dynamic = lite.compare_outputs(
        keras_logits, lite.TFLiteModel(converted["dynamic"])(images)
    )
    int8 = lite.compare_outputs(
        keras_logits, lite.TFLiteModel(converted["int8"])(images)
    )
    assert dynamic["max_rel_diff"] <= 0.03
    assert int8["max_rel_diff"] <= 0.1
    assert dynamic["top1_agreement"] >= 15 / 16
    assert int8["top1_agreement"] >= 14 / 16


def test_int8_model_is_integer_inside(converted):
    interpreter = lite.make_interpreter(converted["int8"], delegate=False)
    types = collections.Counter(
        np.dtype(t["dtype"]).name
        for t in interpreter.get_tensor_details()
        if len(t["shape"]) == 4
    )
    # Every rank-4 tensor (image activations, conv filters) is int8.
    assert set(types) == {"int8"}
    (detail,) = interpreter.get_input_details()
    assert np.dtype(detail["dtype"]) == np.int8
    assert detail["quantization"] == pytest.approx((1.0, -128), abs=1e-6)


def test_uint8_input_takes_camera_frames_and_matches_int8(converted, images):
    report = lite.model_report(converted["int8_uint8_in"])
    (detail,) = report["inputs"]
    assert detail["dtype"] == "uint8"
    assert detail["scale"] == pytest.approx(1.0, abs=1e-6)
    assert detail["zero_point"] == 0
    assert report["outputs"][0]["dtype"] == "int8"

    raw = lite.make_interpreter(converted["int8_uint8_in"])
    int8 = lite.make_interpreter(converted["int8"])
    out_uint8, out_int8 = [], []
    for frame in images[:6]:
        raw.set_tensor(raw.get_input_details()[0]["index"], frame[None])
        raw.invoke()
        quantized = raw.get_tensor(raw.get_output_details()[0]["index"])
        out_uint8.append(
            evaluation._dequantize_output(quantized, raw.get_output_details()[0])
        )
        shifted = (frame.astype(np.int16) - 128).astype(np.int8)[None]
        int8.set_tensor(int8.get_input_details()[0]["index"], shifted)
        int8.invoke()
        out_int8.append(
            int8.get_tensor(int8.get_output_details()[0]["index"]).copy()
        )
    # Same weights and activation ranges; the int8 output only rounds.
    scale = report["outputs"][0]["scale"]
    np.testing.assert_allclose(
        np.concatenate(out_uint8), np.concatenate(out_int8), atol=scale
    )


def test_output_step_is_the_scale_the_output_is_quantized_with(converted):
    # An int8 output's own scale; through the DEQUANTIZE of a float
    # output, the scale of the int8 logits it reads (the same ranges).
    step = evaluation.output_step(converted["int8_uint8_in"])
    report = lite.model_report(converted["int8_uint8_in"])
    assert step == pytest.approx(report["outputs"][0]["scale"])
    assert evaluation.output_step(converted["int8"]) == pytest.approx(step)
    assert evaluation.output_step(converted["float32"]) is None


def test_compare_outputs_counts_differences_in_output_steps():
    reference = np.zeros((2, 4), np.float32)
    # In steps of 0.1: 0, 1, 2, 3 and 0.4, 0, 5, 0.
    outputs = np.array(
        [[0.0, 0.1, -0.2, 0.3], [0.04, 0.0, 0.5, 0.0]], np.float32
    )
    result = lite.compare_outputs(reference, outputs, step=0.1)
    assert result["steps_equal"] == 4 / 8
    assert result["steps_within_two"] == 6 / 8
    assert result["max_steps"] == 5
    assert "steps_equal" not in lite.compare_outputs(reference, outputs)


def test_input_is_fixed_batch_one_without_shape_ops(converted):
    for name, tflite in converted.items():
        interpreter = lite.make_interpreter(tflite, delegate=False)
        (detail,) = interpreter.get_input_details()
        assert list(detail["shape"]) == [1, SIZE, SIZE, 3], name
        assert list(detail["shape_signature"]) == [1, SIZE, SIZE, 3], name
        ops = set(lite.op_list(tflite))
        assert not ops & {"SHAPE", "STRIDED_SLICE", "PACK"}, name


def test_no_tensor_has_rank_above_4(converted):
    for name, tflite in converted.items():
        interpreter = lite.make_interpreter(tflite, delegate=False)
        ranks = [len(t["shape"]) for t in interpreter.get_tensor_details()]
        assert max(ranks) <= 4, name
        assert lite.model_report(tflite)["max_tensor_rank"] == max(ranks)


def test_report_op_counts_match_interpreter(converted):
    for name, tflite in converted.items():
        interpreter = lite.make_interpreter(tflite, delegate=False)
        counts = collections.Counter(
            op["op_name"] for op in interpreter._get_ops_details()
        )
        report = lite.model_report(tflite)
        assert report["ops"] == dict(counts), name
        assert report["num_ops"] == sum(counts.values())
        assert report["size_bytes"] == len(tflite)
        assert report["flex_ops"] == []


def test_xnnpack_runs_float32_shufflenet_as_one_piece(converted):
    coverage = lite.xnnpack_coverage(converted["float32"])
    assert coverage["pieces"] == 1
    assert coverage["partitions"] == 1
    assert coverage["ops_left_out"] == {}
    assert coverage["delegated_ops"] == coverage["total_ops"]


def test_xnnpack_runs_int8_shufflenet_as_one_piece(converted):
    # Needs deploy.deployment_model's average-pool rewrite: XNNPACK has no
    # int8 AVERAGE_POOL_2D.
    coverage = lite.xnnpack_coverage(converted["int8"])
    assert coverage["ops_left_out"] == {}
    assert coverage["pieces"] == 1


def test_xnnpack_coverage_counts_partitions_around_unsupported_op():
    class CumSum(keras.layers.Layer):
        def call(self, x):
            return keras.ops.cumsum(x, axis=1)

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(4, 1)(x)
    x = CumSum()(x)  # TFLite CUMSUM has no XNNPACK kernel.
    x = keras.layers.Conv2D(5, 3, padding="same")(x)
    x = keras.layers.DepthwiseConv2D(3)(x)
    tflite = lite.convert(keras.Model(inputs, x), image_size=8)
    assert lite.op_list(tflite) == [
        "CONV_2D", "CONV_2D", "CUMSUM", "CONV_2D", "DEPTHWISE_CONV_2D"
    ]
    coverage = lite.xnnpack_coverage(tflite)
    assert coverage == {
        "partitions": 2,
        "pieces": 3,
        "delegated_ops": 4,
        "ops_left_out": {"CUMSUM": 1},
        "total_ops": 5,
    }
    # Without the default delegate nothing is delegated.
    interpreter = lite.make_interpreter(tflite, delegate=False)
    assert interpreter._interpreter.NumNodes() == 5


def _cumprod_model():
    class CumProd(keras.layers.Layer):
        def call(self, x):
            return keras.ops.cumprod(x, axis=1)

    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, CumProd()(inputs))


def test_conversion_refuses_op_that_needs_flex():
    with pytest.raises(lite.UnsupportedOpError, match="Cumprod"):
        lite.convert(_cumprod_model(), image_size=8)


def test_check_builtin_ops_refuses_flex_flatbuffer():
    @tf.function(input_signature=[tf.TensorSpec((1, 4), tf.float32)])
    def cumprod(x):
        return tf.math.cumprod(x, axis=1)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [cumprod.get_concrete_function()], cumprod
    )
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS
    ]
    flex = converter.convert()
    assert "FlexCumprod" in lite.op_list(flex)
    with pytest.raises(lite.UnsupportedOpError, match="FlexCumprod"):
        lite.check_builtin_ops(flex)
    assert lite.model_report(flex)["flex_ops"] == ["FlexCumprod"]


def test_bad_arguments_raise_clear_errors(model, saved_model, calibration,
                                          tmp_path):
    with pytest.raises(ValueError, match="mode"):
        lite.convert_saved_model(saved_model, mode="int4")
    with pytest.raises(ValueError, match="calibration_data"):
        lite.convert_saved_model(saved_model, mode="int8")
    with pytest.raises(ValueError, match=r"calibration_data.*\[n, 64, 64"):
        lite.convert_saved_model(
            saved_model, mode="int8", calibration_data=calibration[:, :32]
        )
    with pytest.raises(ValueError, match="input_type"):
        lite.convert_saved_model(saved_model, input_type="uint8")
    with pytest.raises(ValueError, match="image_size"):
        lite.convert(model, image_size=96)
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        lite.load_or_build_model(str(tmp_path / "missing.keras"))
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        lite.load_or_build_model(weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        lite.convert_saved_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing.tflite"):
        lite.model_report(str(tmp_path / "nothing.tflite"))


def test_evaluate_tflite_on_eval_pipeline(converted, model, jpeg_folder):
    config = data.InputConfig(
        source="folder", eval_path=str(jpeg_folder), image_size=SIZE
    )
    dataset = data.InputPipeline(config).dataset(False, 5)
    result = lite.evaluate_tflite(converted["float32"], dataset, model)
    assert result["num_examples"] == 16  # Padding rows are skipped.
    assert result["max_rel_diff"] <= 1e-4
    assert result["top1_agreement"] == 1.0
    assert result["tflite_top1"] == result["keras_top1"]


def _tiny_model(activation=None):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu",
                            name="stem")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(8, 1, activation="relu", name="pw")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(4, name="head")(x)
    if activation:
        x = keras.layers.Activation(activation, name="head_activation")(x)
    return keras.Model(inputs, x)


def _tiny_images(n=8):
    return np.random.default_rng(0).integers(0, 256, (n, 16, 16, 3),
                                             np.uint8)


def test_softmax_model_is_compared_on_probabilities():
    model = _tiny_model("softmax")
    tflite = lite.convert(model)
    assert evaluation.outputs_softmax(tflite)
    assert lite_saved_model.logits_model(model).layers[-1].name == "head"
    images = _tiny_images(4)
    result = lite.evaluate_tflite(
        tflite, [(images, np.zeros(4, np.int32))], model
    )
    probabilities = model.predict(images.astype(np.float32), verbose=0)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
    assert result["max_abs_diff"] <= 1e-4 * probabilities.max()


def test_float_layers_stay_float_and_debug_csv_has_per_layer_error(
    tmp_path,
):
    tiny = _tiny_model()
    images = _tiny_images()
    csv_path = tmp_path / "layers.csv"
    tflite = lite.convert(
        tiny, mode="int8", calibration_data=images,
        float_layers=["first", "last"], debug_csv=str(csv_path),
    )
    interpreter = lite.make_interpreter(tflite, delegate=False)
    tensors = interpreter.get_tensor_details()
    by_op = {
        op["op_name"]: [np.dtype(tensors[i]["dtype"]).name
                        for i in op["outputs"]]
        for op in interpreter._get_ops_details()
    }
    convs = [
        np.dtype(tensors[op["outputs"][0]]["dtype"]).name
        for op in interpreter._get_ops_details()
        if op["op_name"] == "CONV_2D"
    ]
    assert convs == ["float32", "int8"]  # stem float, pw int8
    assert by_op["DEPTHWISE_CONV_2D"] == ["int8"]
    assert by_op["FULLY_CONNECTED"] == ["float32"]
    reference = tiny.predict(images.astype(np.float32), verbose=0)
    result = lite.compare_outputs(reference,
                                    lite.TFLiteModel(tflite)(images))
    assert result["max_rel_diff"] <= 0.1

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert rows, "no quantized layer statistics"
    for row in rows:
        rmse = float(row["rmse"])
        assert rmse == pytest.approx(
            float(row["mean_squared_error"]) ** 0.5, rel=1e-6
        )
        assert float(row["rmse/scale"]) == pytest.approx(
            rmse / float(row["scale"]), rel=1e-6
        )
    assert any("dw" in row["tensor_name"] for row in rows)


def test_ai_edge_quantizer_int8_agrees_with_float(converted, calibration,
                                                  images, keras_logits):
    pytest.importorskip("ai_edge_quantizer")
    tflite = lite.quantize_with_ai_edge_quantizer(
        converted["float32"], calibration
    )
    result = lite.compare_outputs(
        keras_logits, lite.TFLiteModel(tflite)(images)
    )
    # Measured 0.09 here, about 3x the converter's int8 error (0.03).
    assert result["max_rel_diff"] <= 0.15
    assert result["top1_agreement"] >= 14 / 16


def test_ai_edge_quantizer_gives_the_named_ops_one_weight_scale(
    converted, calibration
):
    pytest.importorskip("ai_edge_quantizer")
    tflite = lite.quantize_with_ai_edge_quantizer(
        converted["float32"], calibration,
        per_tensor_ops=("DEPTHWISE_CONV_2D",),
    )
    scales = inspection.weight_scales(tflite)
    assert {op for op, _ in scales} == set(inspection.WEIGHTED_OPS)
    for op, count in scales:
        # Per channel: one scale per output channel, more than one here.
        assert (count == 1) == (op == "DEPTHWISE_CONV_2D"), (op, count)


def _near_zero_variance_model():
    """A depthwise + BN whose channel 0 has zero variance and gamma 1000."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                                     name="dw")(inputs)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.Conv2D(4, 1, name="pw")(x)
    model = keras.Model(inputs, x)
    kernel = np.full((3, 3, 3, 1), 0.01, np.float32)
    kernel[..., 0, 0] = 1.0
    model.get_layer("dw").set_weights([kernel])
    model.get_layer("dw_bn").set_weights([
        np.array([1000.0, 1.0, 1.0], np.float32),  # gamma
        np.zeros(3, np.float32),  # beta
        np.zeros(3, np.float32),  # moving mean
        np.array([0.0, 1.0, 1.0], np.float32),  # moving variance
    ])
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3),
                                               np.uint8)
    images[..., 0] = 0  # Channel 0 is constant, as a dead channel is.
    return model, images


def test_xnnpack_scale_violation_is_found_and_auto_keeps_layer_float():
    model, images = _near_zero_variance_model()
    with pytest.warns(UserWarning, match="dw_bn"):
        tflite = lite.convert(model, mode="int8", calibration_data=images)
    (violation,) = inspection.xnnpack_scale_violations(tflite)
    assert violation["layer"] == "dw_bn"
    assert violation["op"] == "DEPTHWISE_CONV_2D"
    assert violation["max_scale"] >= 256
    coverage = lite.xnnpack_coverage(tflite)
    assert coverage["pieces"] is None and "XNNPACK" in coverage["error"]
    with pytest.warns(UserWarning, match="builtin kernels"):
        runner = lite.TFLiteModel(tflite)
    assert not runner.delegated

    fixed = lite.convert(model, mode="int8", calibration_data=images,
                           float_layers=["auto"])
    assert inspection.xnnpack_scale_violations(fixed) == []
    assert lite.xnnpack_coverage(fixed)["pieces"] == 1
    reference = model.predict(images.astype(np.float32), verbose=0)
    outputs = lite.TFLiteModel(fixed)(images)
    assert lite.compare_outputs(
        reference.reshape(len(images), -1), outputs.reshape(len(images), -1)
    )["max_rel_diff"] <= 0.05
