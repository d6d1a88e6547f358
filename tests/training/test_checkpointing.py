"""Tests of a run's checkpoints: the last N kept, and a damaged newest
checkpoint reported, set aside and replaced by the one before it."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_shufflenet.training import checkpointing


def _model(units=3):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units)])
    return model


def _checkpoints(model_dir, model, max_to_keep=3):
    step = tf.Variable(0, dtype=tf.int64)
    checkpoints = checkpointing.Checkpoints(
        str(model_dir), True, max_to_keep, model=model, step=step
    )
    return checkpoints, step


def _save(checkpoints, step, model, numbers):
    for number in numbers:
        step.assign(number)
        model.layers[0].kernel.assign(np.full((4, 3), number, "float32"))
        checkpoints.save(number, history=[])


def _numbers(checkpoints):
    return [int(p.rsplit("-", 1)[1]) for p in checkpoints.saved()]


def test_only_the_last_n_checkpoints_are_kept(tmp_path):
    model = _model()
    checkpoints, step = _checkpoints(tmp_path, model)
    _save(checkpoints, step, model, range(1, 6))
    assert _numbers(checkpoints) == [3, 4, 5]
    # A new run over the same folder keeps rotating the same files.
    checkpoints, step = _checkpoints(tmp_path, model)
    _save(checkpoints, step, model, [6])
    assert _numbers(checkpoints) == [4, 5, 6]


def test_damaged_newest_checkpoints_are_named_set_aside_and_skipped(
    tmp_path,
):
    model = _model()
    checkpoints, step = _checkpoints(tmp_path, model, max_to_keep=5)
    _save(checkpoints, step, model, range(1, 5))
    folder = tmp_path / "checkpoints"
    # 4: data cut short; 3: empty index; 2: another model's weights.
    (data,) = folder.glob("ckpt-4.data-*")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    (folder / "ckpt-3.index").write_bytes(b"")
    other_dir = tmp_path / "other"
    other = _model(units=5)
    other_checkpoints, other_step = _checkpoints(other_dir, other)
    other_step.assign(2)
    other_checkpoints.save(2, history=[])
    for path in (other_dir / "checkpoints").glob("ckpt-2.*"):
        os.replace(path, folder / path.name)

    lines = []
    checkpoints, step = _checkpoints(tmp_path, _model())
    restored = checkpoints.restore(lines.append)
    assert restored.endswith("ckpt-1")
    assert int(step.numpy()) == 1
    np.testing.assert_array_equal(
        checkpoints.objects["model"].layers[0].kernel.numpy(),
        np.ones((4, 3)),
    )
    assert [line.split()[1].rsplit("-", 1)[1] for line in lines] == [
        "4", "3", "2"
    ]
    assert all("cannot be restored" in line for line in lines)
    assert _numbers(checkpoints) == [1]
    assert sorted(os.listdir(folder / "unusable")) == sorted(
        n for n in os.listdir(folder / "unusable") if n.startswith("ckpt-")
    )
    assert len(list((folder / "unusable").glob("ckpt-*.index"))) == 3
    # Training on saves the next checkpoints beside the good one.
    _save(checkpoints, step, checkpoints.objects["model"], [2, 3, 4])
    assert _numbers(checkpoints) == [2, 3, 4]
    assert tf.train.latest_checkpoint(str(folder)).endswith("ckpt-4")


def test_no_usable_checkpoint_stops_with_the_folder_named(tmp_path):
    model = _model()
    checkpoints, step = _checkpoints(tmp_path, model)
    _save(checkpoints, step, model, [1])
    (tmp_path / "checkpoints" / "ckpt-1.index").write_bytes(b"")
    checkpoints, _ = _checkpoints(tmp_path, _model())
    with pytest.raises(checkpointing.CheckpointError) as error:
        checkpoints.restore(lambda line: None)
    assert str(tmp_path / "checkpoints") in str(error.value)


def test_a_cut_short_state_file_does_not_hide_the_checkpoints(tmp_path):
    model = _model()
    checkpoints, step = _checkpoints(tmp_path, model)
    _save(checkpoints, step, model, [1, 2])
    (tmp_path / "checkpoints" / "checkpoint").write_text('model_checkpoi')
    checkpoints, step = _checkpoints(tmp_path, _model())
    assert checkpoints.restore(lambda line: None).endswith("ckpt-2")
    assert int(step.numpy()) == 2


def test_files_of_a_save_cut_short_by_a_kill_are_removed(tmp_path):
    model = _model()
    checkpoints, step = _checkpoints(tmp_path, model)
    _save(checkpoints, step, model, [1])
    unfinished = tmp_path / "checkpoints" / "ckpt-2_temp"
    unfinished.mkdir()
    (unfinished / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    checkpoints, step = _checkpoints(tmp_path, _model())
    assert not unfinished.exists()
    assert checkpoints.restore(lambda line: None).endswith("ckpt-1")
