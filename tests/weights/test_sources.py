"""Checkpoints saved the way pytorchcv and mmpretrain save them load
through `ShuffleNet(weights=path)` and compute what the source's own
network computes (source_references.py), under the source's own
preprocessing; and the reader runs no code from a file."""

import os
import pickle
import sys
import zipfile

import numpy as np
import pytest
import torch

import keras_shufflenet as ks
from keras_shufflenet.weights import sources
from keras_shufflenet.weights import torch_reader

sys.path.insert(0, os.path.dirname(__file__))
from helpers import assert_computes_reference  # noqa: E402
from helpers import randomize  # noqa: E402
from helpers import relative_difference  # noqa: E402
from helpers import smooth_images  # noqa: E402
from source_references import MmpretrainClassifier  # noqa: E402
from source_references import PytorchcvShuffleNet  # noqa: E402
from source_references import normalised  # noqa: E402


def mmpretrain_torch_input(images):
    mean = torch.tensor((123.675, 116.28, 103.53)).view(1, 3, 1, 1)
    std = torch.tensor((58.395, 57.12, 57.375)).view(1, 3, 1, 1)
    return (torch.from_numpy(images).permute(0, 3, 1, 2) - mean) / std


def pytorchcv_checkpoint(scale, groups, directory, seed=0):
    """A random pytorchcv model, saved as pytorchcv ships it: a bare
    state dict in a `.pth`, zipped to `.pth.zip`."""
    torch.manual_seed(seed)
    model = PytorchcvShuffleNet(scale, groups)
    randomize(
        model, model.output, normalised(smooth_images(4, 224, seed + 1)),
        normalised(smooth_images(4, 224, seed + 2)),
    )
    pth = directory / f"shufflenet_g{groups}_test-0000-{seed:08d}.pth"
    torch.save(model.state_dict(), pth)
    path = directory / f"{pth.name}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(pth, pth.name)
    pth.unlink()
    return model, path


def mmpretrain_checkpoint(directory, seed=0):
    """A random mmpretrain 1x g3 classifier, saved as mmcv saves it."""
    torch.manual_seed(seed)
    model = MmpretrainClassifier()
    randomize(
        model, model.head.fc,
        mmpretrain_torch_input(smooth_images(4, 224, seed + 1)),
        mmpretrain_torch_input(smooth_images(4, 224, seed + 2)),
    )
    path = directory / "shufflenet_v1_test.pth"
    torch.save(
        {"meta": {"mmcls_version": "0.15.0", "CLASSES": ["a", "b"],
                  "epoch": 300, "config": "model = dict(...)"},
         "state_dict": model.state_dict()},
        path,
    )
    return model, path


@pytest.mark.parametrize(
    "scale, groups, sizes",
    [
        # Dense pointwise convs and pytorchcv's 6-channel stem; 200 also
        # ends at 7x7, where the source's AvgPool2d(7) is global.
        (0.25, 1, (224, 200)),
        # Grouped convs (the shuffle) and a 6-channel stem.
        (0.25, 3, (224,)),
        # An 18-channel stem, where this package's rule gives 12.
        (0.75, 3, (224,)),
    ],
)
def test_pytorchcv_checkpoint_computes_what_pytorchcv_does(
    scale, groups, sizes, tmp_path
):
    reference, path = pytorchcv_checkpoint(scale, groups, tmp_path)
    for size in sizes:
        model = ks.ShuffleNet(
            scale, groups, weights=path, input_shape=(size, size, 3),
            classifier_activation=None,
        )
        images = smooth_images(3, size, seed=size)
        _, expected = assert_computes_reference(
            model, reference, images, normalised(images),
            f"pytorchcv {scale}x g{groups} at {size}",
        )
        assert len(set(expected.argmax(-1))) > 1
    # Its network, expressed by arguments: no second copy of the model.
    assert model.get_layer("conv1").filters == int(24 * scale)
    assert model.get_layer("predictions").use_bias
    unit = ks.network_parts(model).units[0]
    assert unit["concat"].input[0] is unit["branch_relu"].output


@pytest.fixture(scope="module")
def mmpretrain_1x(tmp_path_factory):
    return mmpretrain_checkpoint(tmp_path_factory.mktemp("mmpretrain"))


@pytest.mark.xdist_group("mmpretrain_1x")
@pytest.mark.parametrize("size", [224, 160])
def test_mmpretrain_checkpoint_computes_what_mmpretrain_does(
    mmpretrain_1x, size
):
    reference, path = mmpretrain_1x
    model = ks.ShuffleNet(
        1.0, 3, weights=path, input_shape=(size, size, 3),
        classifier_activation=None,
    )
    images = smooth_images(3, size, seed=size)
    assert_computes_reference(
        model, reference, images, mmpretrain_torch_input(images),
        f"mmpretrain 1x g3 at {size}",
    )


@pytest.mark.xdist_group("mmpretrain_1x")
def test_mmpretrain_needs_its_shuffle_permutation(mmpretrain_1x):
    """The permutation that moves mmpretrain's shuffle before the
    depthwise conv matters: without it the logits differ."""
    reference, path = mmpretrain_1x
    source, tensors = ks.weights.read_checkpoint(path)
    assert source.name == "mmpretrain"
    model = ks.ShuffleNet(
        1.0, 3, classifier_activation=None,
        **source.architecture(1.0),
    )
    unpermuted = sources.dataclasses.replace(
        source, shuffle_after_depthwise=False
    )
    sources.port(model, tensors, unpermuted)
    images = smooth_images(2, 224, seed=3)
    relative, _, _ = relative_difference(
        model, reference, images, mmpretrain_torch_input(images)
    )
    assert relative > 1e-2


def test_a_concatenation_order_other_than_the_files_is_refused(tmp_path):
    _, path = pytorchcv_checkpoint(0.25, 1, tmp_path)
    with pytest.raises(
        ValueError, match=r"need concat_order='branch_first'\. Received: "
        r"concat_order='shortcut_first'",
    ):
        ks.ShuffleNet(0.25, 1, weights=path, concat_order="shortcut_first")


def test_wrong_scale_names_the_first_tensor_that_differs(tmp_path):
    _, path = pytorchcv_checkpoint(0.25, 3, tmp_path)
    with pytest.raises(ValueError) as error:
        ks.ShuffleNet(0.5, 3, weights=path)
    message = str(error.value)
    for part in (
        str(path), "'features.init_block.conv.weight'", "(6, 3, 3, 3)",
        "(12, 3, 3, 3)", "use scale=0.25, groups=3",
    ):
        assert part in message


def test_an_unknown_checkpoint_names_the_file_and_the_sources(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError) as error:
        ks.ShuffleNet(weights=path)
    message = str(error.value)
    for part in (str(path), "official, mmpretrain, pytorchcv",
                 "conv1.weight"):
        assert part in message


def test_torch_formats_and_dtypes_read_without_torch(tmp_path):
    state = {
        "a": torch.randn(3, 4),
        "b": torch.arange(6, dtype=torch.int64),
        "h": torch.randn(5).to(torch.float16),
        "bf": torch.randn(5).to(torch.bfloat16),
        "p": torch.nn.Parameter(torch.randn(2, 2)),
    }
    state["view"] = state["a"][:, 1]  # Shares a's storage.
    expected = {k: v.detach().float().numpy() if v.dtype == torch.bfloat16
                else v.detach().numpy() for k, v in state.items()}
    torch.save(state, tmp_path / "zip.pth")
    torch.save(state, tmp_path / "legacy.pth.tar",
               _use_new_zipfile_serialization=False)
    with zipfile.ZipFile(tmp_path / "zipped.pth.zip", "w") as archive:
        archive.write(tmp_path / "legacy.pth.tar", "legacy.pth")
    for name in ("zip.pth", "legacy.pth.tar", "zipped.pth.zip"):
        got = torch_reader.read_torch_checkpoint(tmp_path / name)
        assert sorted(got) == sorted(expected), name
        for key, value in expected.items():
            np.testing.assert_array_equal(got[key], value, err_msg=name)
            assert got[key].dtype == value.dtype, (name, key)


class _Touch:
    """What an attacker's checkpoint holds: unpickling it creates a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("container", ["pickle", "torch_zip"])
def test_a_pickle_that_would_run_code_is_refused_before_it_runs(
    tmp_path, container
):
    victim = tmp_path / "created_by_the_checkpoint"
    path = tmp_path / "evil.pth"
    if container == "pickle":
        with open(path, "wb") as f:
            pickle.dump({"state_dict": _Touch(str(victim))}, f, protocol=2)
    else:
        # A real checkpoint's archive, with the attack among its tensors.
        torch.save(
            {"state_dict": {"w": torch.zeros(2)}, "x": _Touch(str(victim))},
            path,
        )
    with pytest.raises(torch_reader.UnsafeCheckpointError) as error:
        ks.ShuffleNet(weights=path)
    assert str(path) in str(error.value)
    assert "'io.open'" in str(error.value)
    assert not victim.exists()


def test_a_truncated_checkpoint_names_the_file(tmp_path):
    _, path = pytorchcv_checkpoint(0.25, 1, tmp_path)
    cut = tmp_path / "cut.pth.zip"
    cut.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated or corrupted") as error:
        ks.ShuffleNet(0.25, 1, weights=cut)
    assert str(cut) in str(error.value)


def test_a_tensorpack_npz_is_refused_saying_why(tmp_path):
    """Not "truncated or corrupted": the file is fine, its network is
    not this one."""
    path = tmp_path / "ShuffleNetV1-0.5x-g=8.npz"
    np.savez(path, **{
        "conv1/W:0": np.zeros((3, 3, 3, 16), "float32"),
        "linear/b:0": np.zeros(1000, "float32"),
    })
    with pytest.raises(ValueError, match="tensorpack") as error:
        ks.ShuffleNet(0.5, 8, weights=path)
    message = str(error.value)
    assert str(path) in message and '"SAME"' in message
    assert "official, mmpretrain, pytorchcv" in message
