"""Tests of quantization-aware training: the tf_keras twin, QAT steps, the
full-int8 conversion and its agreement with the QAT Keras model."""

import collections
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from keras_shufflenet import data
from keras_shufflenet import lite
from keras_shufflenet import qat
from keras_shufflenet import training
from keras_shufflenet.lite import evaluation
from keras_shufflenet.lite import inspection as lite_inspection
from keras_shufflenet.models import ShuffleNet
from keras_shufflenet.qat import conversion
from keras_shufflenet.qat import inspection as qat_inspection
from keras_shufflenet.training import config as training_config

SIZE = 32
CLASSES = 4


def _model(**kwargs):
    return ShuffleNet(
        input_shape=(SIZE, SIZE, 3), classes=CLASSES,
        classifier_activation=None, **kwargs,
    )


def _randomize_batch_norms(model, seed=0):
    # Fresh BN layers are identities; the twin must carry real statistics.
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                rng.normal(0, 0.2, beta.shape).astype("float32"),
                rng.normal(0, 0.2, mean.shape).astype("float32"),
                rng.uniform(0.5, 2.0, variance.shape).astype("float32"),
            ])


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(
        0, 256, (n, SIZE, SIZE, 3)
    ).astype("float32")


def _labelled(n, seed=0):
    """Images whose class is the brightest quadrant: learnable in steps."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 96, (n, SIZE, SIZE, 3)).astype("float32")
    labels = rng.integers(0, CLASSES, n)
    half = SIZE // 2
    for image, label in zip(images, labels):
        row, col = divmod(int(label), 2)
        image[row * half:(row + 1) * half, col * half:(col + 1) * half] += 150
    return images, labels.astype("int32")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(scale=0.25, groups=3, se=True, shallow=True),
        dict(scale=0.25, groups=2, shallow=True, shuffle_order="official"),
        # pytorchcv's network: fine-tuned from its weights, it trains QAT.
        dict(scale=0.25, groups=1, concat_order="branch_first",
             classifier_bias=True, stem_width=6),
    ],
    ids=["g3_se_shallow", "g2_shallow_official", "g1_pytorchcv_layout"],
)
def test_twin_computes_the_model_and_weights_go_back_exactly(kwargs):
    model = _model(**kwargs)
    _randomize_batch_norms(model)
    images = _images(4)
    twin = qat.tf_keras_twin(model)
    # Eager calls: `predict` would trace each model first.
    expected = keras.ops.convert_to_numpy(model(images, training=False))
    got = twin(images, training=False).numpy()
    relative = np.abs(got - expected).max() / np.abs(expected).max()
    assert relative <= 1e-5

    copy = _model(**kwargs)
    qat.copy_weights_back(twin, copy)
    for before, after in zip(model.weights, copy.weights):
        np.testing.assert_array_equal(
            before.numpy(), after.numpy(), err_msg=before.path
        )


def test_per_tensor_depthwise_twin_folds_batch_norm_and_unfolds_back():
    """The folded twin computes the model; unfolded, the weights come
    back. (The recipe test below converts one: one scale per depthwise
    kernel.)"""
    model = _model(scale=0.25, groups=3, shallow=True)
    _randomize_batch_norms(model)
    images = _images(4)
    twin = qat.tf_keras_twin(
        model, freeze_batch_norm=True, per_tensor_depthwise=True
    )
    depthwise = [
        layer for layer in model.layers
        if isinstance(layer, keras.layers.DepthwiseConv2D)
    ]
    norms = [
        layer for layer in twin.layers
        if isinstance(layer, tf_keras.layers.BatchNormalization)
    ]
    assert len(depthwise) == 8  # One per unit (Table 5's half depth).
    # Left: the stem's and the two 1x1 convs' of each unit.
    assert len(norms) == 1 + 2 * 8
    expected = keras.ops.convert_to_numpy(model(images, training=False))
    got = twin(images, training=False).numpy()
    assert np.abs(got - expected).max() / np.abs(expected).max() <= 1e-5

    copy = _model(scale=0.25, groups=3, shallow=True)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            layer.set_weights([np.zeros_like(layer.get_weights()[0])])
    qat.copy_weights_back(twin, copy)
    for before, after in zip(model.weights, copy.weights):
        # The kernel times the norm's scale, then divided by it.
        np.testing.assert_allclose(
            after.numpy(), before.numpy(), rtol=1e-6, atol=1e-7,
            err_msg=before.path,
        )



def test_per_tensor_depthwise_needs_frozen_batch_norm():
    with pytest.raises(ValueError, match="freeze_batch_norm=True"):
        qat.tf_keras_twin(
            _model(scale=0.25, groups=1, shallow=True),
            per_tensor_depthwise=True,
        )


def test_a_layer_the_twin_cannot_express_is_named():
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.LayerNormalization(name="odd_norm")(x)
    model = keras.Model(inputs, x)
    with pytest.raises(qat.UnsupportedLayerError, match="odd_norm"):
        qat.qat_model(model)


# The tests on the trained model run on one xdist worker, which builds it
# once (pyproject.toml: --dist=loadgroup).
on_trained_model = pytest.mark.xdist_group("qat_trained")


@pytest.fixture(scope="module")
def trained():
    return _train_small_qat_model()


def _train_small_qat_model():
    """A small trained model, and its QAT model after a few steps."""
    keras.utils.set_random_seed(0)
    images, labels = _labelled(128)
    # Shallow: half the units, half the time to build and convert.
    model = _model(scale=0.25, groups=8, shallow=True)
    model.compile(
        keras.optimizers.Adam(0.01),
        keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=0.2
        ),
    )
    # Built before `fit`, whose first trace would otherwise create Adam's
    # slots and then trace again: half of the fit's time.
    model.optimizer.build(model.trainable_variables)
    model.fit(
        images, keras.ops.one_hot(labels, CLASSES), batch_size=16, epochs=8,
        verbose=0,
    )

    twin = qat.tf_keras_twin(model, freeze_batch_norm=True)
    quantized = qat.qat_model(twin)
    conversion.pin_input_range(quantized)
    conversion.calibrate_ranges(quantized, twin, images)
    variables = conversion.trainable_variables(quantized)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build(variables)
    frozen = {
        v.name: v.numpy()
        for v in quantized.weights
        if v.name.endswith(
            ("/value:0", "shortcut_pool/depthwise_kernel:0")
        )
    }

    # No AutoGraph, as `TrainStep._step`: 40% of the tracing.
    @tf.function(autograph=False)
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = quantized(x, training=True)
            # Smoothed labels keep the logits inside the output range.
            loss = tf.reduce_mean(
                keras.losses.categorical_crossentropy(
                    tf.one_hot(y, CLASSES), logits, from_logits=True,
                    label_smoothing=0.2,
                )
            )
        optimizer.apply_gradients(
            zip(tape.gradient(loss, variables), variables)
        )
        return loss

    # Steps on one batch: its loss must fall, through fake quantization.
    losses = [float(step(images[:32], labels[:32])) for _ in range(8)]
    qat.snap_biases(quantized)  # As `QatTrainer.export` does.
    # Converted once (10 s), for the tests of its graph and its outputs:
    # int8 logits, which the agreement test counts in output steps.
    tflite = qat.convert_qat(quantized, output_type="int8")
    return model, quantized, losses, frozen, images, labels, tflite


@on_trained_model
def test_qat_steps_reduce_the_loss_and_leave_the_constants(trained):
    _, quantized, losses, frozen, _, _, _ = trained
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    assert len(frozen) == 5  # Two normalisation constants, three pools.
    for variable in quantized.weights:
        if variable.name in frozen:
            np.testing.assert_array_equal(
                variable.numpy(), frozen[variable.name], variable.name
            )


@on_trained_model
def test_converted_qat_model_is_the_ptq_graph_all_int8_in_one_piece(trained):
    model, _, _, _, images, _, tflite = trained
    # At 32x32 stage 4 is 1x1; PTQ's graph then keeps three more RESHAPEs
    # the converter drops from the QAT graph (which is not slower).
    ptq = lite.convert(
        model, mode="int8", calibration_data=images,
        num_calibration_images=16, logits=True, output_type="int8",
    )
    lite.check_builtin_ops(tflite)
    ops = collections.Counter(lite.op_list(tflite))
    expected = collections.Counter(lite.op_list(ptq))
    assert ops["RESHAPE"] <= expected["RESHAPE"]
    del ops["RESHAPE"], expected["RESHAPE"]
    assert ops == expected
    assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 0
    # The padding before the stem's max pool pads rows (rank 3), as PTQ's:
    # as rank 4 with one value per row, XNNPACK ran ShuffleNet 60% slower.
    assert _pad_ranks(tflite) == _pad_ranks(ptq)
    coverage = lite.xnnpack_coverage(tflite)
    assert coverage["pieces"] == 1, coverage
    interpreter = lite.make_interpreter(tflite, delegate=False)
    inner = [
        t for t in interpreter.get_tensor_details()
        if t["dtype"] not in (np.int8, np.int32) and t["name"]
    ]
    # Only the float input, into QUANTIZE; the logits are int8.
    assert len(inner) == 1, [t["name"] for t in inner]


def _pad_ranks(tflite):
    interpreter = lite.make_interpreter(tflite, delegate=False)
    tensors = interpreter.get_tensor_details()
    return sorted(
        len(tensors[op["inputs"][0]]["shape"])
        for op in interpreter._get_ops_details()
        if op["op_name"] == "PAD"
    )


@on_trained_model
def test_tflite_agrees_with_the_qat_keras_model(trained):
    _, quantized, _, _, _, _, tflite = trained
    images, labels = _labelled(200, seed=1)
    # LiteRT's default kernels (XNNPACK), as a phone runs them.
    outputs = lite.TFLiteModel(tflite)(images)
    expected = quantized(images, training=False).numpy()
    result = lite.compare_outputs(
        expected, outputs, labels, step=evaluation.output_step(tflite)
    )
    assert result["keras_top1"] > 0.9  # A real model.
    assert result["top1_agreement"] >= 0.995
    # With the biases snapped, the integer kernels and the float32
    # simulation differ only where a float32 sum lies within rounding of a
    # step boundary, about one value in 10^5 in the first units; those
    # single steps spread over the units (tflite/README.md, "PTQ or QAT").
    # Measured on this model, seeds 0-2, oneDNN off and on: 95-99% of the
    # logits equal, 99.5-100% within two steps, the largest 1-6 steps off;
    # unsnapped 15-24% equal and 74-85% within two. A range QAT did not
    # learn puts a layer tens of steps off.
    assert result["steps_equal"] >= 0.9, result
    assert result["steps_within_two"] >= 0.99, result
    assert result["max_steps"] <= 8, result


@on_trained_model
def test_snapped_biases_are_the_int8_models_int32_biases(trained):
    """`snap_biases` puts each folded bias on the grid the converter
    stores it on (input scale times weight scale, per channel), so the
    QAT model adds what the integer kernels add."""
    _, quantized, _, _, _, _, tflite = trained
    biases = _int32_biases(tflite)
    assert len(biases) == 1 + 3 * 8  # The stem's conv, three per unit.
    _check_on_grid(quantized, biases)
    # Snapped biases stay where they are.
    assert qat.snap_biases(quantized) < 1e-3


def _int32_biases(tflite):
    """`{layer: (int32 bias, its scales)}` of a QAT model's conversion,
    by the QAT layer the bias comes from (a batch norm or a conv)."""
    interpreter = lite.make_interpreter(tflite, delegate=False)
    tensors = interpreter.get_tensor_details()
    biases = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        bias = tensors[op["inputs"][2]]
        found = re.search(
            r"quant_(\w+?)/(FusedBatchNormV3|BiasAdd)", bias["name"]
        )
        if found is None:
            continue  # The average-pooled shortcut's: zero.
        biases[found.group(1)] = (
            interpreter.get_tensor(bias["index"]),
            bias["quantization_parameters"]["scales"],
        )
    return biases


def _check_on_grid(quantized, biases):
    for name, (integers, grid) in biases.items():
        layer = quantized.get_layer(f"quant_{name}").layer
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            gamma, beta, mean, variance = (
                v.numpy().astype("float64") for v in layer.weights[:4]
            )
            bias = beta - mean * gamma / np.sqrt(variance + layer.epsilon)
        else:
            bias = layer.bias.numpy().astype("float64")
        np.testing.assert_allclose(
            bias / grid, integers, atol=1e-3, err_msg=name
        )


@on_trained_model
def test_layer_steps_show_rounding_that_adds_up_over_the_units(trained):
    """The converter keeps QAT's ranges: the stem differs by rounding
    only, and every unit is reported, deeper ones further off."""
    _, quantized, _, _, _, _, tflite = trained
    images, _ = _labelled(4, seed=1)
    steps = qat_inspection.layer_steps(quantized, tflite, images)
    names = list(steps)
    assert names[:4] == [
        "quantize_layer", "preprocessing_scale", "preprocessing", "conv1_pad"
    ]
    for name in names[:4] + ["conv1_relu"]:
        # One step, up to float32 rounding of (q - zero point) * scale.
        assert steps[name] <= 1.0 + 1e-4, (name, steps[name])
    units = [n for n in names if n.endswith("_gconv1_relu")]
    assert len(units) == 8, units  # Table 5's half depth: 2 + 4 + 2.
    assert names[-1] == "predictions"
    assert steps["predictions"] <= 16
    # The last unit's input is further off than the first unit's.
    assert steps[units[-1]] > steps[units[0]], steps


@on_trained_model
def test_each_layer_on_the_tflite_models_own_inputs_is_one_step_off(trained):
    """Fed the TFLite model's own values of its inputs, every layer of the
    QAT model gives the TFLite model's output to one step: the integer
    kernels compute what QAT simulates, and the logits' larger differences
    are single-step roundings carried through the units. A range the
    converter did not take from QAT shows as a jump."""
    _, quantized, _, _, _, _, tflite = trained
    images, _ = _labelled(4, seed=1)
    steps = qat_inspection.layer_steps(quantized, tflite, images, isolated=True)
    # The same layers as through the whole network: every unit's.
    assert list(steps) == list(qat_inspection.layer_steps(quantized, tflite, images))
    for name, value in steps.items():
        # One step, up to float32 rounding of (q - zero point) * scale.
        assert value <= 1.0 + 1e-4, (name, value)
    (high,) = [
        v for v in quantized.get_layer("quant_stage3_unit2_gconv1_relu").weights
        if v.name.endswith("output_max:0")
    ]
    learned = high.numpy()
    # Clips what lies above a tenth of the range QAT learned.
    high.assign(learned * 0.1)
    try:
        moved = qat_inspection.layer_steps(quantized, tflite, images, isolated=True)
    finally:
        high.assign(learned)
    assert moved["stage3_unit2_gconv1_relu"] > 2, moved
    assert moved["stage3_unit2_dwconv_bn"] <= 1.0 + 1e-4


def _recipe(model_dir, qat_from):
    return training.ExperimentConfig(
        model_dir=str(model_dir),
        qat_from=str(qat_from),
        model=training.ModelConfig(scale=0.25, groups=3, shallow=True),
        data=data.InputConfig(source="digits", image_size=SIZE),
    )


def test_qat_refuses_a_float_runs_model_dir(tmp_path):
    float_run = _recipe(tmp_path, "")
    training.save_config(float_run, tmp_path / training_config.CONFIG_FILE)
    with pytest.raises(ValueError, match="holds a float training run"):
        qat.QatTrainer(_recipe(tmp_path, tmp_path / "m.keras"))


def test_per_tensor_depthwise_without_qat_from_is_refused(tmp_path):
    config = _recipe(tmp_path, "")
    config.qat_per_tensor_depthwise = True
    with pytest.raises(ValueError, match="qat_per_tensor_depthwise.*qat_from"):
        config.validate()


def test_float_trainer_refuses_a_qat_config(tmp_path):
    with pytest.raises(ValueError, match="keras_shufflenet.qat.train_qat"):
        training.Trainer(_recipe(tmp_path, tmp_path / "m.keras"))


@pytest.mark.long
@pytest.mark.onednn_off
def test_qat_recipe_exports_int8_and_resumes_bit_exactly(
    tmp_path, monkeypatch, restores_op_determinism
):
    """`QatTrainer`, as `recipes/train.py --qat_from` runs it: the data
    pipeline, checkpoints, evaluation and the full-int8 export, here with
    one scale per depthwise kernel; a run restarted from its step-2
    checkpoint, as a kill -9 after that checkpoint leaves it, ends with
    the uninterrupted run's weights, the activation ranges and the
    optimizer state included."""
    keras.utils.set_random_seed(0)
    float_path = tmp_path / "float.keras"
    ShuffleNet(
        0.25, 3, shallow=True, input_shape=(SIZE, SIZE, 3), classes=10
    ).save(float_path)

    def recipe(model_dir):
        return training.ExperimentConfig(
            model_dir=str(model_dir),
            strategy="cpu",
            qat_from=str(float_path),
            qat_per_tensor_depthwise=True,
            model=training.ModelConfig(
                scale=0.25, groups=3, shallow=True, fused_training=False
            ),
            optimizer=training.OptimizerConfig(lr=0.05, warmup_epochs=0.0),
            train=training.TrainConfig(
                batch_size=16, steps=4, eval_batch_size=120,
                bn_recalibration_epochs=0.0, steps_per_execution=2,
                checkpoint_every_steps=2, log_every_steps=2,
                deterministic=True,
            ),
            data=data.InputConfig(source="digits", image_size=SIZE),
        )

    whole = qat.QatTrainer(recipe(tmp_path / "whole"), verbose=False)
    result = whole.fit()
    assert result.step == 4
    assert result.metrics["examples"] == 360
    lite.check_builtin_ops(result.tflite_path)
    interpreter = lite.make_interpreter(result.tflite_path, delegate=False)
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    ops = collections.Counter(lite.op_list(result.tflite_path))
    assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 1
    per_tensor = collections.defaultdict(set)
    for op, scales in lite_inspection.weight_scales(result.tflite_path):
        per_tensor[op].add(scales == 1)
    assert per_tensor == {
        "DEPTHWISE_CONV_2D": {True},  # The units' and the shortcut pools'.
        "CONV_2D": {False},
        "FULLY_CONNECTED": {True},  # As the converter makes it for PTQ.
    }
    exported = keras.saving.load_model(result.keras_path, safe_mode=True)
    assert exported.name == "shufflenet_0.25x_g3_shallow"
    # The export snapped the biases, the depthwise convs' own ones too.
    biases = _int32_biases(result.tflite_path)
    assert sum(name.endswith("_dwconv") for name in biases) == 8
    _check_on_grid(whole.model, biases)

    # What a kill -9 right after the step-2 checkpoint leaves behind.
    restarted = tmp_path / "restarted"
    (restarted / "checkpoints").mkdir(parents=True)
    for path in (tmp_path / "whole" / "checkpoints").glob("ckpt-2.*"):
        shutil.copy(path, restarted / "checkpoints" / path.name)
    shutil.copy(
        tmp_path / "whole" / training_config.CONFIG_FILE,
        restarted / training_config.CONFIG_FILE,
    )
    # The export is checked above: this run ends at the weights.
    config = recipe(restarted)
    config.export = False
    resumed = qat.QatTrainer(config, verbose=False)
    lines = []
    resumed.log.say = lines.append
    # The ranges come from the checkpoint: no calibration pass.
    calibrated = []
    monkeypatch.setattr(
        qat.trainer, "calibrate_ranges", lambda *a: calibrated.append(a)
    )
    assert resumed.fit().step == 4
    assert not calibrated
    assert any("at step 2 of 4" in line for line in lines), lines
    names = [v.name for v in whole.model.weights]
    assert any(n.endswith("output_max:0") for n in names)
    # The whole run's export snapped its biases (`snap_biases`).
    qat.snap_biases(resumed.model)
    for a, b, name in zip(whole.model.weights, resumed.model.weights, names):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
    for a, b in zip(whole.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
