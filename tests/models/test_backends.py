"""The model family on every Keras 3 backend: TensorFlow, JAX, PyTorch.

One session fixture saves each variant under TensorFlow (this process)
and runs `backend_worker.py` once per other backend, both at once; the
tests compare what each backend computed with TensorFlow's outputs.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_shufflenet as ks
from keras_shufflenet import lite

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "weights"))
from backend_worker import transfer_learning  # noqa: E402
from test_sources import pytorchcv_checkpoint  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "backend_worker.py")
BACKENDS = ("jax", "torch")

COMMON = {
    "scale": 0.25, "input_shape": (32, 32, 3), "classes": 10,
    "classifier_activation": None,
}
# Every structure of the family: each group count, Table 1's full depth
# (g3) and Table 5's half depth, SE, Table 3's no-shuffle ablation, and
# the headless feature backbone (g8).
VARIANTS = {
    "g1": {"groups": 1, "shallow": True},
    "g2": {"groups": 2, "shallow": True},
    "g3": {"groups": 3},
    "g4": {"groups": 4, "shallow": True},
    "g3-se": {"groups": 3, "se": True, "shallow": True},
    "g3-no-shuffle": {"groups": 3, "shuffle": False, "shallow": True},
    "g8-features": {
        "groups": 8, "shallow": True, "include_top": False,
        "input_shape": (None, None, 3),
    },
}
# Made on the other backends from `.keras` files; the rest are built there
# by `ShuffleNet(...)` and given the weights (one of the two per variant:
# JAX takes ~5 s to create a model's weights).
LOADED = ["g3", "g3-se"]
# Relative to the largest output, as float32 sums in another order give.
TOLERANCE = 1e-4


def relative_error(got, expected):
    return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


def randomize_batch_norm(model, seed):
    """BN statistics away from the identity, so that they are compared."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights(
                [rng.uniform(0.5, 1.5, w.shape).astype("float32")
                 for w in layer.get_weights()]
            )


@pytest.fixture(scope="module")
def backend_runs(tmp_path_factory):
    """TensorFlow's outputs, and each backend's `.npz`, keyed by name."""
    work = tmp_path_factory.mktemp("backends")
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3))
    x = x.astype("float32")
    np.save(work / "x.npy", x)
    variants, expected = {}, {}
    for seed, (name, kwargs) in enumerate(VARIANTS.items()):
        kwargs = {**COMMON, **kwargs}
        model = ks.ShuffleNet(**kwargs)
        randomize_batch_norm(model, seed)
        model.save(work / f"{name}.keras")
        model.save_weights(work / f"{name}.weights.h5")
        variants[name] = kwargs
        expected[name] = keras.ops.convert_to_numpy(model(x))
        if not kwargs.get("include_top", True):
            features = ks.feature_extractor(model)(x)
            for stage, value in features.items():
                expected[f"{name}/{stage}"] = value.numpy()
    # Pretrained weights as pytorchcv ships them, for Keras' transfer-
    # learning path on every backend.
    _, checkpoint = pytorchcv_checkpoint(0.25, 1, work)
    (work / "variants.json").write_text(
        json.dumps({"variants": variants, "load": LOADED, "fit": "g3-se",
                    "transfer": str(checkpoint)})
    )
    # (JAX compiles each weight initializer's shape on its own: conftest's
    # XLA_FLAGS make that a third as long.)
    processes = {
        backend: subprocess.Popen(
            [sys.executable, WORKER, str(work)],
            env=dict(os.environ, KERAS_BACKEND=backend,
                     TF_CPP_MIN_LOG_LEVEL="3"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for backend in BACKENDS
    }
    results = {"tensorflow": transfer_learning(str(checkpoint), x)}
    for backend, process in processes.items():
        output = process.communicate(timeout=400)[0]
        assert process.returncode == 0, f"{backend}:\n{output[-3000:]}"
        assert json.loads(output.strip().splitlines()[-1])["backend"] == (
            backend
        )
        results[backend] = dict(np.load(work / f"{backend}.npz"))
    return work, x, expected, results


pytestmark = [pytest.mark.xdist_group("backends"), pytest.mark.long]


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_files_saved_under_tensorflow_load_safely_with_the_same_outputs(
    backend_runs, backend
):
    _, _, expected, results = backend_runs
    errors = {
        name: relative_error(results[backend][name], expected[name])
        for name in LOADED
    }
    assert max(errors.values()) <= TOLERANCE, errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_variant_built_on_the_backend_computes_the_same_function(
    backend_runs, backend
):
    _, _, expected, results = backend_runs
    built = [name for name in VARIANTS if name not in LOADED]
    errors = {
        name: relative_error(results[backend][name], expected[name])
        for name in built
    }
    assert max(errors.values()) <= TOLERANCE, errors
    # The headless backbone's three feature maps.
    for stage in ("stage2", "stage3", "stage4"):
        key = f"g8-features/{stage}"
        got = results[backend][key]
        assert got.shape == expected[key].shape
        assert relative_error(got, expected[key]) <= TOLERANCE, key


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_fitted_on_the_backend_loads_in_tensorflow(
    backend_runs, backend
):
    work, x, _, results = backend_runs
    result = results[backend]
    assert np.all(np.isfinite(result["fit/loss"]))
    # Kernels, BN scales and offsets, and the moving statistics all move.
    assert result["fit/changed"].mean() >= 0.9
    model = keras.saving.load_model(
        work / f"{backend}-fitted.keras", safe_mode=True
    )
    assert relative_error(
        model.predict(x, verbose=0), result["fit/outputs"]
    ) <= TOLERANCE


def test_a_model_trained_under_jax_converts_with_the_tflite_program(
    backend_runs, tmp_path
):
    """tflite/convert.py, started under JAX, runs itself again on
    TensorFlow and gives the one-piece XNNPACK graph, whose outputs are
    the JAX model's."""
    work, x, _, results = backend_runs
    output = tmp_path / "from_jax.tflite"
    completed = subprocess.run(
        [
            sys.executable, os.path.join(ROOT, "tflite/convert.py"),
            f"--model={work / 'jax-fitted.keras'}", f"--output={output}",
        ],
        env=dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "running it again with KERAS_BACKEND=tensorflow" in (
        completed.stderr
    )
    report = json.loads((tmp_path / "from_jax.tflite.json").read_text())
    assert report["flex_ops"] == []
    assert report["xnnpack"]["pieces"] == 1
    assert report["xnnpack"]["ops_left_out"] == {}
    outputs = lite.TFLiteModel(str(output))(x)
    assert relative_error(outputs, results["jax"]["fit/outputs"]) <= TOLERANCE


def test_a_model_trained_under_torch_converts_to_the_same_one_piece_graph(
    backend_runs,
):
    """The `.keras` file fitted under PyTorch, loaded on TensorFlow and
    converted as tflite/convert.py converts (the test above runs that
    program end to end from JAX): one XNNPACK piece, builtin ops, the
    PyTorch model's outputs."""
    work, x, _, results = backend_runs
    model = keras.saving.load_model(
        work / "torch-fitted.keras", safe_mode=True
    )
    tflite = lite.convert(model, mode="float32", image_size=32)
    report = lite.model_report(tflite)
    assert report["flex_ops"] == []
    assert report["xnnpack"]["pieces"] == 1
    assert report["xnnpack"]["ops_left_out"] == {}
    outputs = lite.TFLiteModel(tflite)(x)
    assert relative_error(outputs, results["torch"]["fit/outputs"]) <= TOLERANCE


@pytest.mark.parametrize("backend", ("tensorflow",) + BACKENDS)
def test_keras_transfer_learning_freezes_then_trains_the_backbone(
    backend_runs, backend
):
    """`base.trainable = False` under a new head: `fit` leaves every
    weight and batch norm statistic of the pretrained backbone
    bit-identical; unfrozen and recompiled, `fit` moves them."""
    result = backend_runs[3][backend]
    assert bool(result["transfer/frozen_unchanged"]) is True
    assert result["transfer/kernels_moved"].all()
    assert result["transfer/statistics_moved"].all()
