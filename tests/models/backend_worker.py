"""Runs the model family under the backend named by KERAS_BACKEND.

Usage: backend_worker.py WORK_DIR

WORK_DIR holds `variants.json` ({"variants": {name: ShuffleNet kwargs},
"load": [names], "fit": name}), `x.npy`, and per variant
`<name>.weights.h5` and `<name>.keras`, saved under TensorFlow. Under its
own backend, this process makes each variant once (JAX compiles each
weight initializer's shape, ~5 s a model):

- the "load" variants from their `.keras` files, with `safe_mode=True`;
- the others from `ShuffleNet(**kwargs)` and their weights files;

runs each (with `include_top=False`, through `feature_extractor` too),
fits the "fit" variant for one epoch and saves it as
`<backend>-fitted.keras`, runs Keras' transfer-learning path from the
"transfer" checkpoint (`transfer_learning`), and writes every output to
`<backend>.npz`, for the TensorFlow side to compare
(tests/models/test_backends.py). Models run through `predict`: compiled
whole, where JAX would compile op by op in eager calls.
"""

import json
import os
import sys

import keras
import numpy as np

import keras_shufflenet as ks


def transfer_learning(weights, x, classes=3):
    """Keras' transfer-learning guide on a pretrained backbone: frozen
    under a new head, `fit`; then unfrozen, recompiled, `fit`.

    Returns:
        `{"transfer/frozen_unchanged", "transfer/kernels_moved",
        "transfer/statistics_moved"}`: whether the frozen fit left every
        weight and batch norm statistic of the backbone bit-identical, and
        whether the unfrozen fit moved its kernels and its statistics.
    """
    base = ks.ShuffleNet(
        0.25, 1, include_top=False, pooling="avg", weights=weights,
        input_shape=x.shape[1:],
    )
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, keras.layers.Dense(classes)(base(inputs)))
    labels = np.arange(len(x)) % classes
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    before = [np.copy(w) for w in base.get_weights()]
    base.trainable = False
    model.compile(keras.optimizers.SGD(0.05), loss)
    model.fit(x, labels, batch_size=4, epochs=1, verbose=0)
    frozen = [np.copy(w) for w in base.get_weights()]
    base.trainable = True
    model.compile(keras.optimizers.SGD(0.01), loss)
    model.fit(x, labels, batch_size=4, epochs=1, verbose=0)
    paths = [v.path for v in base.weights]
    moved = {
        path: not np.array_equal(a, b)
        for path, a, b in zip(paths, before, base.get_weights())
    }
    return {
        "transfer/frozen_unchanged": np.asarray(all(
            np.array_equal(a, b) for a, b in zip(before, frozen)
        )),
        "transfer/kernels_moved": np.asarray(
            [moved[p] for p in paths if p.endswith("kernel")]
        ),
        "transfer/statistics_moved": np.asarray(
            [moved[p] for p in paths if p.endswith("moving_mean")]
        ),
    }


def main(work_dir):
    backend = keras.backend.backend()
    with open(os.path.join(work_dir, "variants.json")) as f:
        manifest = json.load(f)
    x = np.load(os.path.join(work_dir, "x.npy"))
    out = {}
    for name, kwargs in manifest["variants"].items():
        if name in manifest["load"]:
            model = keras.saving.load_model(
                os.path.join(work_dir, f"{name}.keras"), safe_mode=True
            )
        else:
            model = ks.ShuffleNet(**kwargs)
            model.load_weights(os.path.join(work_dir, f"{name}.weights.h5"))
        out[name] = model.predict(x, verbose=0)
        if not kwargs.get("include_top", True):
            features = ks.feature_extractor(model).predict(x, verbose=0)
            for stage, value in features.items():
                out[f"{name}/{stage}"] = value
        if name == manifest["fit"]:
            fitted = model

    model = fitted
    before = [np.copy(w) for w in model.get_weights()]
    model.compile(
        keras.optimizers.SGD(0.05),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    labels = np.arange(len(x)) % model.output_shape[-1]
    history = model.fit(x, labels, batch_size=4, epochs=1, verbose=0)
    out["fit/loss"] = np.asarray(history.history["loss"])
    out["fit/changed"] = np.asarray(
        [np.any(a != b) for a, b in zip(before, model.get_weights())]
    )
    model.save(os.path.join(work_dir, f"{backend}-fitted.keras"))
    out["fit/outputs"] = model.predict(x, verbose=0)
    out.update(transfer_learning(manifest["transfer"], x))
    np.savez(os.path.join(work_dir, f"{backend}.npz"), **out)
    print(json.dumps({"backend": backend, "arrays": len(out)}))


if __name__ == "__main__":
    main(sys.argv[1])
