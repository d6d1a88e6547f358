"""`.keras` files saved by an earlier release load with the same layer
names, weights and predictions.

`data/` holds two small ShuffleNets saved by 0.1.0 (commit c44f8c6) with
random weights and batch norm statistics, and their predictions on two
random images, computed then with TF_ENABLE_ONEDNN_OPTS=0:

    ShuffleNet(0.1, 3, se=True, shallow=True, classes=5,
               input_shape=(32, 32, 3))
    ShuffleNet(0.1, 2, shallow=True, shuffle_order="official",
               include_preprocessing=False, classes=5,
               input_shape=(32, 32, 3))
"""

import pathlib

import keras
import numpy as np
import pytest

import keras_shufflenet as ks

DATA = pathlib.Path(__file__).parent / "data"
SAVED_BY_0_1_0 = {
    "shufflenet_0.1x_g3_se_shallow": dict(
        scale=0.1, groups=3, se=True, shallow=True
    ),
    "shufflenet_0.1x_g2_shallow_official": dict(
        scale=0.1, groups=2, shallow=True, shuffle_order="official",
        include_preprocessing=False,
    ),
}


@pytest.fixture(scope="module")
def saved_predictions():
    return dict(np.load(DATA / "predictions_0.1.0.npz"))


@pytest.mark.parametrize("name", sorted(SAVED_BY_0_1_0))
def test_a_file_saved_by_0_1_0_loads_with_its_names_and_predictions(
    name, saved_predictions
):
    path = DATA / f"{name}.keras"
    loaded = keras.saving.load_model(path, safe_mode=True)
    built = ks.ShuffleNet(
        classes=5, input_shape=(32, 32, 3), name=name, **SAVED_BY_0_1_0[name]
    )
    # Today's constructor names every layer as 0.1.0 did, so the file's
    # weights load into it by name, and the parts are found in both.
    assert [layer.name for layer in loaded.layers] == [
        layer.name for layer in built.layers
    ]
    ks.models.load_weights(built, path)
    for a, b in zip(loaded.weights, built.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert len(ks.network_parts(loaded).units) == 8

    images = saved_predictions["images"]
    got = loaded.predict(images, verbose=0)
    np.testing.assert_array_equal(got, built.predict(images, verbose=0))
    # Bit for bit on the machine that saved them; other CPUs' kernels may
    # round the last bits differently.
    np.testing.assert_allclose(got, saved_predictions[name], rtol=1e-5,
                               atol=1e-7)
