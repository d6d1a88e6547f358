"""Tests of the atomic writer every output goes through."""

import os

import pytest

from keras_shufflenet.utils.files import write_atomic


def test_write_atomic_writes_text_and_bytes_and_creates_folders(tmp_path):
    path = tmp_path / "a" / "b" / "report.json"
    write_atomic(path, "{}\n")
    assert path.read_text() == "{}\n"
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(path.parent) == ["report.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.tflite"
    write_atomic(path, b"old")
    with pytest.raises(TypeError):
        write_atomic(path, 12345)  # neither str nor bytes
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.tflite"]
