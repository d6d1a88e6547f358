"""Fine-tuning with the training recipe: a run starts from pretrained
weights (a new classifier for other classes), freezes the stem and
stages, re-estimates only the batch norms that train, exports the
weights' architecture, and resumes without loading the weights again.

The pretrained weights are a pytorchcv checkpoint the tests write
(0.25x g=1: pytorchcv's network differs from the paper's in its
concatenation order, stem width and classifier bias)."""

import json
import os
import shutil
import sys

import keras
import numpy as np
import pytest

import keras_shufflenet as ks
from keras_shufflenet import data
from keras_shufflenet import qat
from keras_shufflenet import training
from keras_shufflenet.models.pretrained import architecture_of
from keras_shufflenet.training import config as training_config
from keras_shufflenet.training import trainer as trainer_module
from keras_shufflenet.training import transfer
from keras_shufflenet.training.distribution import build_model
from keras_shufflenet.training.flags import apply_overrides

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "weights"))
from test_sources import pytorchcv_checkpoint  # noqa: E402

PYTORCHCV = {
    "shuffle_order": "paper", "concat_order": "branch_first",
    "classifier_bias": True, "stem_width": 6, "include_preprocessing": True,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return pytorchcv_checkpoint(0.25, 1, tmp_path_factory.mktemp("ckpt"))[1]


def finetune_config(model_dir, weights, **overrides):
    config = training.ExperimentConfig(
        model_dir=str(model_dir),
        strategy="cpu",
        export=False,
        model=training.ModelConfig(
            scale=0.25, groups=1, weights=str(weights), freeze="stage3",
        ),
        optimizer=training.OptimizerConfig(lr=0.5, warmup_epochs=0.0),
        train=training.TrainConfig(
            batch_size=16, steps=4, eval_batch_size=120,
            bn_recalibration_epochs=0.04, steps_per_execution=2,
            checkpoint_every_steps=2, log_every_steps=2,
        ),
        data=data.InputConfig(source="digits", image_size=32),
    )
    return apply_overrides(config, overrides)


def values(layers):
    return {layer.name: [np.copy(w) for w in layer.get_weights()]
            for layer in layers if layer.weights}


@pytest.fixture(scope="module")
def finetuned(checkpoint, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("finetune")
    trainer = training.Trainer(
        finetune_config(model_dir, checkpoint, export=True), verbose=False
    )
    lines = []
    trainer.log.say = lines.append
    pretrained = ks.ShuffleNet(
        0.25, 1, weights=checkpoint, include_top=False,
        input_shape=(32, 32, 3),
    )
    return trainer, trainer.fit(), lines, values(pretrained.layers)


@pytest.mark.xdist_group("finetune")
def test_a_run_starts_from_the_weights_with_a_new_classifier(finetuned):
    trainer, result, lines, _ = finetuned
    # 1000 ImageNet classes in the file, 10 digits here: all but the
    # classifier's kernel and bias load.
    total = len(trainer.model.weights)
    (line,) = [x for x in lines if x.startswith("Initialised from")]
    assert f"{total - 2} of {total} tensors loaded" in line
    assert "starting fresh: predictions (10 classes)" in line
    assert "frozen up to stage3" in line
    assert architecture_of(trainer.model) == PYTORCHCV
    with open(os.path.join(trainer.config.model_dir,
                           training_config.CONFIG_FILE)) as f:
        saved = json.load(f)
    assert saved["config"]["model"]["concat_order"] == "branch_first"
    assert saved["config"]["model"]["stem_width"] == 6
    assert result.step == 4


@pytest.mark.xdist_group("finetune")
def test_frozen_parts_keep_their_weights_and_statistics(finetuned):
    trainer, _, _, pretrained = finetuned
    parts = ks.network_parts(trainer.model)
    frozen = values(
        list(parts.stem.values())
        + [layer for unit in parts.units if unit.stage <= 3
           for layer in unit.layers.values()]
    )
    assert len(frozen) == len(trainer.frozen) > 30
    for name, weights in frozen.items():
        for a, b in zip(weights, pretrained[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)
    # Stage 4 trained, and its batch norms were re-estimated.
    moved = [
        name for name, weights in values(
            [layer for unit in parts.units if unit.stage == 4
             for layer in unit.layers.values()]
        ).items()
        if any(not np.array_equal(a, b)
               for a, b in zip(weights, pretrained[name]))
    ]
    assert "stage4_unit1_gconv1" in moved
    assert "stage4_unit2_dwconv_bn" in moved
    assert int(trainer.recalibrated_at.numpy()) == 4


@pytest.mark.xdist_group("finetune")
def test_the_export_has_the_weights_architecture(finetuned):
    trainer, result, _, _ = finetuned
    exported = keras.saving.load_model(result.keras_path, safe_mode=True)
    assert architecture_of(exported) == PYTORCHCV
    (_, _), (images, _) = data.load_digits_arrays(32)
    images = images[:8].astype("float32")
    np.testing.assert_allclose(
        exported.predict(images, verbose=0),
        keras.ops.softmax(trainer.model(images, training=False)).numpy(),
        atol=1e-5,
    )


@pytest.mark.xdist_group("finetune")
def test_phase_two_from_the_export_loads_every_tensor(finetuned, tmp_path):
    _, result, _, _ = finetuned
    config = finetune_config(tmp_path, result.keras_path, **{
        "model.freeze": None,
    })
    model_config = transfer.with_weights_architecture(config.model)
    model = build_model(model_config, 10, 32)
    loaded, total, fresh = transfer.initialize_from_weights(
        model, model_config, 32
    )
    assert (loaded, fresh) == (total, [])
    exported = keras.saving.load_model(result.keras_path)
    for a, b in zip(model.get_weights(), exported.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.xdist_group("finetune")
def test_qat_from_the_export_keeps_the_finetuned_weights(
    finetuned, checkpoint, tmp_path
):
    """`--qat_from` the export with the fine-tune's recipe (its
    `model.weights` and `model.freeze` still set): QAT starts from the
    export in the weights' architecture, not from the pretrained weights
    again, and trains. (The int8 export is tested in tests/qat.)"""
    _, result, _, _ = finetuned
    config = finetune_config(tmp_path, checkpoint, **{
        "qat_from": result.keras_path, "train.steps": 1,
        "optimizer.lr": 0.01, "train.bn_recalibration_epochs": 0.0,
        "train.checkpoint_every_steps": 1, "train.steps_per_execution": 1,
    })
    trainer = qat.QatTrainer(config, verbose=False)
    exported = keras.saving.load_model(result.keras_path)
    assert architecture_of(trainer.float_model) == PYTORCHCV
    for a, b in zip(trainer.float_model.get_weights(), exported.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert trainer.fit().step == 1


def test_weights_of_another_shape_name_the_layer(checkpoint, tmp_path):
    wider = tmp_path / "wider.keras"
    ks.ShuffleNet(0.5, 1, input_shape=(32, 32, 3), classes=10,
                  stem_width=6).save(wider)
    config = finetune_config(tmp_path, wider)
    model_config = transfer.with_weights_architecture(config.model)
    model = build_model(model_config, 10, 32)
    with pytest.raises(ValueError, match="do not fit layer "
                       "'stage2_unit1_gconv1'"):
        transfer.initialize_from_weights(model, model_config, 32)
    with pytest.raises(ValueError, match="need model.concat_order="
                       "'branch_first'. Received: model.concat_order="
                       "'shortcut_first'"):
        transfer.with_weights_architecture(
            finetune_config(tmp_path, checkpoint, **{
                "model.concat_order": "shortcut_first"
            }).model
        )


@pytest.mark.onednn_off
def test_a_resumed_finetune_restores_the_run_not_the_weights(
    checkpoint, tmp_path, monkeypatch, restores_op_determinism
):
    """Deterministic, killed after the step-2 checkpoint: the restart
    restores that checkpoint, never the pretrained weights again (it
    resumes with their file gone), and ends bit-identical to the
    uninterrupted run."""
    weights = tmp_path / checkpoint.name
    shutil.copy(checkpoint, weights)
    whole = training.Trainer(
        finetune_config(tmp_path / "whole", weights,
                        **{"train.deterministic": True}),
        verbose=False,
    )
    whole.fit()
    restarted = tmp_path / "restarted"
    (restarted / "checkpoints").mkdir(parents=True)
    for path in (tmp_path / "whole" / "checkpoints").glob("ckpt-2.*"):
        shutil.copy(path, restarted / "checkpoints" / path.name)
    shutil.copy(tmp_path / "whole" / training_config.CONFIG_FILE,
                restarted / training_config.CONFIG_FILE)
    monkeypatch.setattr(
        trainer_module, "initialize_from_weights",
        lambda *a: pytest.fail("a resumed run loaded the weights again"),
    )
    weights.unlink()
    resumed = training.Trainer(
        finetune_config(restarted, weights,
                        **{"train.deterministic": True}),
        verbose=False,
    )
    assert resumed.fit().step == 4
    for a, b in zip(whole.model.weights, resumed.model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
