"""`fused.training_model`: the same function as the model, with its weights.

Every check compares the fused training graph against the model it was
built from: outputs in training and inference mode, gradients of every
trainable weight and the moving statistics after one training call.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_shufflenet as ks
from keras_shufflenet.training import fused
from keras_shufflenet.training import transfer

SIZE = 96


def model_with_random_bn(seed=0, **kwargs):
    """A small ShuffleNet whose batch norms are not the identity."""
    keras.utils.set_random_seed(seed)
    args = {"scale": 0.5, "groups": 3, "input_shape": (SIZE, SIZE, 3),
            "classes": 10, "classifier_activation": None}
    args.update(kwargs)
    model = ks.ShuffleNet(**args)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c))
            layer.beta.assign(rng.normal(0.0, 0.5, c))
            layer.moving_mean.assign(rng.normal(0.0, 0.1, c))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, c))
    return model


def images(n=8, seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def train_call(model, variables, x):
    """Training-mode output, gradients of a fixed loss, moving stats."""
    with tf.GradientTape() as tape:
        y = model(x, training=True)
        loss = tf.reduce_sum(y * tf.linspace(-1.0, 1.0, y.shape[-1]))
    grads = tape.gradient(loss, variables)
    return y.numpy(), grads


def count(model, cls):
    return sum(isinstance(layer, cls) for layer in model.layers)


# g3 keeps Table 1's depth; the others are Table 5's half depth, whose
# units have every structure of the full net (stride 1 and 2, each stage's
# first unit) at half the eager float64 time.
CONFIGS = [
    {"groups": 3},
    {"groups": 1, "shallow": True},
    {"groups": 2, "shallow": True},
    {"groups": 4, "scale": 1.0, "shallow": True},
    {"groups": 8, "shallow": True},
    {"groups": 3, "shuffle_order": "official", "shallow": True},
    {"groups": 3, "shuffle": False, "shallow": True},
    {"groups": 3, "se": True, "shallow": True},
]


def assert_same_training_step(model, trainer, x, rtol):
    """Outputs, moving statistics and gradients agree to `rtol`."""
    # The input normalisation's constants are float32 in either graph.
    np.testing.assert_allclose(
        trainer(x, training=False), model(x, training=False), rtol=1e-5,
        atol=1e-5,
    )
    variables = model.trainable_variables
    stats = [v.numpy() for v in model.non_trainable_variables]
    expected, expected_grads = train_call(model, variables, x)
    expected_stats = [v.numpy() for v in model.non_trainable_variables]
    for variable, value in zip(model.non_trainable_variables, stats):
        variable.assign(value)
    got, grads = train_call(trainer, variables, x)
    got_stats = [v.numpy() for v in model.non_trainable_variables]

    # ShuffleNet's outputs are float32 under any other policy.
    out_rtol = max(rtol, 1e-6)
    assert np.max(np.abs(got - expected)) <= out_rtol * np.max(
        np.abs(expected)
    )
    for want, have in zip(expected_stats, got_stats):
        np.testing.assert_allclose(have, want, rtol=rtol, atol=rtol)
    for k, (variable, want, have) in enumerate(
        zip(variables, expected_grads, grads)
    ):
        assert have is not None, variable.path
        want, have = np.asarray(want), np.asarray(have)
        if variable.path.endswith("dwconv_bn/beta"):
            # Exactly zero in exact arithmetic: the next batch norm removes
            # any per-channel shift. Both sides are rounding noise, small
            # next to the same layer's gamma gradient (the weight before).
            assert variables[k - 1].path.endswith("dwconv_bn/gamma")
            gamma_grad = np.max(np.abs(np.asarray(expected_grads[k - 1])))
            assert np.max(np.abs(have)) <= 1e3 * rtol * gamma_grad
            assert np.max(np.abs(want)) <= 1e3 * rtol * gamma_grad
            continue
        tolerance = rtol * np.max(np.abs(want))
        assert np.max(np.abs(have - want)) <= tolerance, variable.path


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: str(c))
def test_training_model_computes_the_models_function_and_gradients(config):
    # In float64 the rewrites must agree to rounding; float32 rounding in a
    # deep net with random batch norms and a 3x3 stage 4 is far larger.
    keras.config.set_dtype_policy("float64")
    try:
        # The input normalisation's constants are float32 in the fused
        # graph (as in `lite.rewrite`); leave it out to compare in float64.
        model = model_with_random_bn(include_preprocessing=False, **config)
        trainer = fused.training_model(model)
    finally:
        keras.config.set_dtype_policy("float32")
    assert count(trainer, fused.FastBatchNormalization) > 0
    assert_same_training_step(model, trainer, images().astype("float64"),
                              rtol=1e-8)


def gradients(policy, weights, fuse=False):
    """Gradients of the train-mode loss of a 0.5x model under `policy`."""
    keras.config.set_dtype_policy(policy)
    try:
        model = ks.ShuffleNet(0.5, 3, input_shape=(SIZE, SIZE, 3),
                              classes=10, classifier_activation=None)
    finally:
        keras.config.set_dtype_policy("float32")
    model.set_weights(weights)
    graph = fused.training_model(model) if fuse else model
    if fuse:
        assert count(graph, fused.FusedShuffleUnit) == 13
    dtype = "float64" if policy == "float64" else "float32"
    _, grads = train_call(graph, model.trainable_variables,
                          images().astype(dtype))
    return {v.path: np.asarray(g, "float64")
            for v, g in zip(model.trainable_variables, grads)}


def median_relative_error(grads, reference):
    return np.median([
        np.max(np.abs(grads[k] - want)) / np.max(np.abs(want))
        for k, want in reference.items()
        if not k.endswith("dwconv_bn/beta")
    ])


def test_float32_gradients_are_within_one_percent_of_float64():
    # The fused graph reorders the batch norm reductions (sums over pixels
    # become sums over a group's channels of Gram-matrix products), so its
    # float32 rounding differs from Keras' graph. Measured against float64
    # on these weights (median over weights of the max relative error):
    # fused float32 0.3%, Keras float32 0.001%, Keras mixed_bfloat16 76%;
    # on weights initialised in float32, fused 0.16% and Keras 0.67%.
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float64")
    try:
        weights = ks.ShuffleNet(0.5, 3, input_shape=(SIZE, SIZE, 3),
                                classes=10).get_weights()
    finally:
        keras.config.set_dtype_policy("float32")
    reference = gradients("float64", weights)
    fast = median_relative_error(
        gradients("float32", weights, fuse=True), reference
    )
    assert fast < 1e-2


def test_float32_training_step_matches_the_model_forward():
    keras.utils.set_random_seed(0)
    model = ks.ShuffleNet(0.5, 3, input_shape=(SIZE, SIZE, 3), classes=10,
                          classifier_activation=None)
    trainer = fused.training_model(model)
    x = images()
    stats = [v.numpy() for v in model.non_trainable_variables]
    expected = model(x, training=True).numpy()
    expected_stats = [v.numpy() for v in model.non_trainable_variables]
    for variable, value in zip(model.non_trainable_variables, stats):
        variable.assign(value)
    got = trainer(x, training=True).numpy()
    assert np.max(np.abs(got - expected)) <= 1e-4 * np.max(np.abs(expected))
    for want, have in zip(expected_stats,
                          [v.numpy() for v in model.non_trainable_variables]):
        np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4)


def test_training_model_fuses_every_stride_1_unit_and_stride_2_tail():
    model = ks.ShuffleNet(1.0, 3)
    trainer = fused.training_model(model)
    # Table 1: 4 + 8 + 4 units, the first of each stage with stride 2.
    assert count(trainer, fused.FusedShuffleUnit) == 13
    assert count(trainer, fused.FusedBranchTail) == 3
    # The other batch norms: conv1 and each stride-2 unit's gconv1.
    assert count(trainer, fused.FastBatchNormalization) == 4
    # Stages 3 and 4 start on stage 2's and 3's per-group tensors.
    assert count(trainer, fused.GroupwisePointwiseConv) == 2
    assert trainer.output_shape == model.output_shape


def test_training_model_shares_the_models_variables():
    model = model_with_random_bn()
    trainer = fused.training_model(model)
    assert {id(v) for v in trainer.weights} == {id(v) for v in model.weights}
    assert {id(v) for v in trainer.trainable_variables} == {
        id(v) for v in model.trainable_variables
    }


@pytest.mark.long
def test_fit_on_training_model_trains_the_model_under_jit_compile():
    model = model_with_random_bn(groups=2, shallow=True,
                                 classifier_activation="softmax")
    before = [w.copy() for w in model.get_weights()]
    trainer = fused.training_model(model)
    trainer.compile(keras.optimizers.SGD(0.01),
                    "sparse_categorical_crossentropy", jit_compile=True)
    assert trainer.jit_compile is True  # Not Keras' silent fallback.
    history = trainer.fit(images(8), np.arange(8) % 10, batch_size=4,
                          epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    changed = [np.any(a != b) for a, b in zip(before, model.get_weights())]
    # Every weight moves: kernels, gammas, betas and the moving statistics.
    assert sum(changed) >= 0.9 * len(changed)


@pytest.mark.long
def test_fit_on_training_model_under_mirrored_strategy(mirrored_strategy):
    with mirrored_strategy.scope():
        model = model_with_random_bn(groups=2, shallow=True,
                                     classifier_activation="softmax")
        trainer = fused.training_model(model)
        trainer.compile(keras.optimizers.SGD(0.01),
                        "sparse_categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    history = trainer.fit(images(8), np.arange(8) % 10, batch_size=4,
                          epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(np.any(a != b) for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_units_unfused_and_trains(policy):
    keras.config.set_dtype_policy(policy)
    try:
        model = model_with_random_bn(groups=2, shallow=True)
        trainer = fused.training_model(model)
        norms_only = fused.training_model(model, fuse=False)
        x = images()
        expected, _ = train_call(model, model.trainable_variables, x)
        got, _ = train_call(norms_only, model.trainable_variables, x)
        _, grads = train_call(trainer, model.trainable_variables, x)
    finally:
        keras.config.set_dtype_policy("float32")
    # The Gram-matrix statistics need float32: only batch norm changes.
    assert count(trainer, fused.FusedShuffleUnit) == 0
    assert count(trainer, fused.FusedBranchTail) == 0
    assert count(trainer, fused.FastBatchNormalization) > 0
    assert got.dtype == expected.dtype == "float32"
    # The same forward ops in the same order as Keras' batch norm.
    np.testing.assert_array_equal(got, expected)
    assert all(g is not None and np.all(np.isfinite(g)) for g in grads)


def test_frozen_batch_norm_uses_moving_statistics_like_keras():
    model = model_with_random_bn()
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    trainer = fused.training_model(model)
    x = images()
    stats = [v.numpy() for v in model.non_trainable_variables]
    np.testing.assert_allclose(
        trainer(x, training=True), model(x, training=True), rtol=1e-5,
        atol=1e-5,
    )
    for variable, value in zip(model.non_trainable_variables, stats):
        if "moving" in variable.path:
            np.testing.assert_array_equal(variable.numpy(), value)


def test_a_finetune_fuses_only_the_units_that_train():
    """Frozen up to stage 3 (`transfer.freeze`), stage 4's 3 stride-1
    units and its stride-2 tail stay fused; the frozen units run as the
    plain model does, in inference mode, their statistics fixed."""
    keras.config.set_dtype_policy("float64")
    try:
        model = model_with_random_bn(include_preprocessing=False)
        frozen = transfer.freeze(model, "stage3")
        trainer = fused.training_model(model)
    finally:
        keras.config.set_dtype_policy("float32")
    assert count(trainer, fused.FusedShuffleUnit) == 3
    assert count(trainer, fused.FusedBranchTail) == 1
    assert "stage3_unit8_dwconv_bn" in frozen
    assert_same_training_step(model, trainer, images().astype("float64"),
                              rtol=1e-8)
    frozen_stats = [v.numpy() for layer in model.layers
                    if not layer.trainable for v in layer.weights]
    train_call(trainer, model.trainable_variables, images())
    for value, variable in zip(frozen_stats, [
        v for layer in model.layers if not layer.trainable
        for v in layer.weights
    ]):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_training_model_saves_and_loads_in_safe_mode(tmp_path):
    model = model_with_random_bn()
    trainer = fused.training_model(model)
    path = os.path.join(tmp_path, "trainer.keras")
    trainer.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = images(2)
    for training in (False, True):
        np.testing.assert_allclose(
            loaded(x, training=training), trainer(x, training=training),
            rtol=1e-5, atol=1e-5,
        )


def test_training_model_refuses_a_non_functional_model():
    with pytest.raises(ValueError, match="functional keras.Model"):
        fused.training_model(keras.layers.Dense(3))
