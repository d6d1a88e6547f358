"""Tests of the official release's checkpoints: read with the package's
safe reader, mapped through `models.parts`, against a PyTorch model with
the release's layout (official_reference)."""

import hashlib
import os
import pickle
import sys

import keras
import numpy as np
import pytest
import torch

import keras_shufflenet as ks
from keras_shufflenet.weights import official
from keras_shufflenet.weights import sources

sys.path.insert(0, os.path.dirname(__file__))
from helpers import RELATIVE_TOLERANCE  # noqa: E402
from helpers import keras_logits as logits  # noqa: E402
from helpers import randomize  # noqa: E402
from helpers import smooth_images  # noqa: E402
from official_reference import ReferenceShuffleNetV1  # noqa: E402


def to_torch_bgr(images):
    """The release's input: BGR, channels first, [0, 255] (ToBGRTensor)."""
    return torch.from_numpy(images[..., ::-1].copy()).permute(0, 3, 1, 2)


def randomized_reference(
    scale, groups, seed, size=64, pool="global", classes=1000
):
    """A reference model whose every weight and BN statistic is random."""
    torch.manual_seed(seed)
    model = ReferenceShuffleNetV1(scale, groups, pool=pool, classes=classes)
    return randomize(
        model, model.classifier[0],
        to_torch_bgr(smooth_images(4, size, seed + 1)),
        to_torch_bgr(smooth_images(4, size, seed + 2)),
    )


def save_checkpoint(model, path, wrapped=True):
    """Saves like the release (DataParallel names in a dict) or bare."""
    state = model.state_dict()
    if wrapped:
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(state, path)
    return path


def max_differences(model, reference, images):
    keras_logits = logits(model, images)
    with torch.no_grad():
        torch_logits = reference(to_torch_bgr(images)).numpy()
    absolute = float(np.max(np.abs(keras_logits - torch_logits)))
    relative = absolute / float(np.max(np.abs(torch_logits)))
    return absolute, relative, keras_logits, torch_logits


@pytest.fixture(scope="module")
def checkpoint_05_g3(tmp_path_factory):
    """A random 0.5x g3 reference and its checkpoint in the release format."""
    reference = randomized_reference(0.5, 3, seed=3)
    path = tmp_path_factory.mktemp("official") / "0.5x.pth.tar"
    return reference, save_checkpoint(reference, path)


@pytest.mark.parametrize(
    "scale, groups, size, pool, wrapped",
    [
        # The release's AvgPool2d(7) is global only at 224x224.
        (0.5, 3, 224, "avgpool7", True),
        # Smaller inputs need a global average in the reference; 72 and 80
        # give odd sizes into stride-2 units, where padding matters most.
        (1.0, 3, 72, "global", False),
        (0.5, 8, 80, "global", True),
        (1.5, 8, 64, "global", True),
    ],
)
def test_converted_model_matches_official_architecture(
    scale, groups, size, pool, wrapped, tmp_path
):
    reference = randomized_reference(
        scale, groups, seed=7, size=size, pool=pool
    )
    path = save_checkpoint(reference, tmp_path / "ckpt.pth.tar", wrapped)
    model = official.from_official_checkpoint(
        path, scale, groups, input_shape=(size, size, 3),
        classifier_activation=None,
    )
    images = smooth_images(4, size, seed=11)
    absolute, relative, keras_logits, torch_logits = max_differences(
        model, reference, images
    )
    print(f"{scale}x g{groups} {size}px: max |diff| {absolute:.3g}, "
          f"relative {relative:.3g}")
    assert relative <= RELATIVE_TOLERANCE
    np.testing.assert_array_equal(
        keras_logits.argmax(-1), torch_logits.argmax(-1)
    )
    # The images get different classes, so the top-1 check is not vacuous.
    assert len(set(torch_logits.argmax(-1))) > 1


@pytest.mark.xdist_group("checkpoint_05_g3")
def test_equivalence_needs_the_shuffle_fix_and_bgr_reversal(checkpoint_05_g3):
    """Skipping either conversion step breaks equivalence: the test above
    can fail."""
    reference, path = checkpoint_05_g3
    source, tensors = ks.weights.read_checkpoint(path)
    images = smooth_images(4, 64, seed=11)
    model = ks.ShuffleNet(
        0.5, 3, shuffle_order="official", include_preprocessing=False,
        input_shape=(64, 64, 3), classifier_activation=None,
    )
    sources.port(model, tensors, source)
    assert max_differences(model, reference, images)[1] <= RELATIVE_TOLERANCE

    conv1 = model.get_layer("conv1").kernel
    conv1.assign(conv1.numpy()[:, :, ::-1])  # Undo BGR -> RGB.
    assert max_differences(model, reference, images)[1] > 1e-2

    sources.port(model, tensors, source)
    dwconv = model.get_layer("stage3_unit2_dwconv").kernel
    unpermuted = np.transpose(
        tensors["features.5.branch_main_1.3.weight"], sources.DEPTHWISE_AXES
    )
    dwconv.assign(unpermuted)  # As if the shuffle stood after the dwconv.
    assert max_differences(model, reference, images)[1] > 1e-2


@pytest.mark.xdist_group("checkpoint_05_g3")
def test_include_top_false_drops_only_the_classifier(checkpoint_05_g3):
    reference, path = checkpoint_05_g3
    backbone = official.from_official_checkpoint(
        path, 0.5, 3, include_top=False, pooling="avg",
        input_shape=(64, 64, 3),
    )
    images = smooth_images(2, 64, seed=5)
    features = logits(backbone, images)
    with torch.no_grad():
        classifier = reference.classifier[0].weight.numpy()
        expected = reference(to_torch_bgr(images)).numpy()
    np.testing.assert_allclose(
        features @ classifier.T, expected, rtol=0,
        atol=RELATIVE_TOLERANCE * np.abs(expected).max(),
    )


@pytest.mark.xdist_group("checkpoint_05_g3")
def test_wrong_scale_names_the_configuration_it_looks_like(checkpoint_05_g3):
    _, path = checkpoint_05_g3
    with pytest.raises(ValueError) as error:
        official.from_official_checkpoint(path, 1.0, 3)
    message = str(error.value)
    assert str(path) in message
    assert "'first_conv.0.weight' has shape (12, 3, 3, 3)" in message
    assert "ShuffleNet 0.5x with groups=3: use scale=0.5, groups=3" in message


def test_wrong_groups_names_the_configuration_it_looks_like(tmp_path):
    path = save_checkpoint(
        ReferenceShuffleNetV1(0.5, 8), tmp_path / "g8.pth.tar"
    )
    with pytest.raises(ValueError, match=r"0\.5x with groups=8"):
        official.from_official_checkpoint(path, 0.5, 3)


@pytest.mark.xdist_group("checkpoint_05_g3")
def test_the_variant_is_read_from_the_shapes(checkpoint_05_g3):
    source, tensors = ks.weights.read_checkpoint(checkpoint_05_g3[1])
    assert source.name == "official"
    assert sources.checkpoint_variant(tensors, source) == (0.5, 3)


def test_other_class_count_names_tensor_shapes_and_fix(tmp_path):
    reference = randomized_reference(0.5, 3, seed=2, classes=10)
    path = save_checkpoint(reference, tmp_path / "ten.pth.tar")
    with pytest.raises(ValueError) as error:
        official.from_official_checkpoint(path, 0.5, 3)
    message = str(error.value)
    for part in ("'classifier.0.weight'", "(10, 480)", "(1000, 480)",
                 "classes=10"):
        assert part in message
    model = official.from_official_checkpoint(
        path, 0.5, 3, classes=10, input_shape=(64, 64, 3),
        classifier_activation=None,
    )
    images = smooth_images(2, 64, seed=4)
    assert max_differences(model, reference, images)[1] <= RELATIVE_TOLERANCE


def _edited_checkpoint(source, path, edit):
    state = torch.load(source, weights_only=True)
    edit(state["state_dict"])
    torch.save(state, path)
    return path


def test_shape_mismatch_names_tensor_and_both_shapes(
    checkpoint_05_g3, tmp_path
):
    name = "module.features.3.branch_main_1.3.weight"

    def edit(state):
        state[name] = torch.zeros(30, 1, 5, 5)

    path = _edited_checkpoint(checkpoint_05_g3[1], tmp_path / "k5.pt", edit)
    with pytest.raises(ValueError) as error:
        official.from_official_checkpoint(path, 0.5, 3)
    message = str(error.value)
    for part in ("'features.3.branch_main_1.3.weight'", "(30, 1, 5, 5)",
                 "(30, 1, 3, 3)", "stage2_unit4_dwconv"):
        assert part in message


@pytest.mark.xdist_group("checkpoint_05_g3")
def test_leftover_tensor_is_named(checkpoint_05_g3, tmp_path):
    def edit(state):
        state["module.features.16.branch_main_1.0.weight"] = torch.zeros(1)

    path = _edited_checkpoint(checkpoint_05_g3[1], tmp_path / "extra.pt", edit)
    with pytest.raises(
        ValueError,
        match=r"missing tensors \[\]; unexpected tensors "
        r"\['features\.16\.branch_main_1\.0\.weight'\]",
    ):
        official.from_official_checkpoint(path, 0.5, 3)


@pytest.mark.xdist_group("checkpoint_05_g3")
def test_missing_tensor_is_named(checkpoint_05_g3, tmp_path):
    def edit(state):
        del state["module.features.2.branch_main_2.1.running_var"]

    path = _edited_checkpoint(checkpoint_05_g3[1], tmp_path / "less.pt", edit)
    with pytest.raises(
        ValueError,
        match=r"missing tensors \['features\.2\.branch_main_2\.1\."
        r"running_var'\]; unexpected tensors \[\]",
    ):
        official.from_official_checkpoint(path, 0.5, 3)


@pytest.mark.xdist_group("checkpoint_05_g3")
def test_non_finite_tensor_is_refused(checkpoint_05_g3, tmp_path):
    def edit(state):
        state["module.features.0.branch_main_1.1.running_var"][3] = np.nan

    path = _edited_checkpoint(checkpoint_05_g3[1], tmp_path / "nan.pt", edit)
    with pytest.raises(
        ValueError,
        match=r"'features\.0\.branch_main_1\.1\.running_var'.*inf or nan",
    ):
        official.from_official_checkpoint(path, 0.5, 3)


@pytest.mark.xdist_group("checkpoint_05_g3")
def test_truncated_file_error_names_the_path(checkpoint_05_g3, tmp_path):
    data = checkpoint_05_g3[1].read_bytes()
    path = tmp_path / "truncated.pth.tar"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted") as error:
        official.from_official_checkpoint(path, 0.5, 3)
    assert str(path) in str(error.value)


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint\n")
    with pytest.raises(ValueError) as error:
        ks.weights.read_checkpoint(path)
    assert str(path) in str(error.value)


def test_arbitrary_objects_are_never_unpickled(tmp_path):
    path = tmp_path / "object.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": keras.layers.ReLU}, f, protocol=2)
    with pytest.raises(
        ks.weights.UnsafeCheckpointError, match="'keras.src.layers"
    ) as error:
        ks.weights.read_checkpoint(path)
    assert str(path) in str(error.value)


def test_list_of_tensors_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        ks.weights.read_checkpoint(path)


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth.tar"):
        official.from_official_checkpoint(tmp_path / "nothing.pth.tar", 0.5, 3)


@pytest.mark.xdist_group("checkpoint_05_g3")
def test_reading_a_checkpoint_needs_no_torch(checkpoint_05_g3, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails.
    source, tensors = ks.weights.read_checkpoint(checkpoint_05_g3[1])
    assert source.name == "official"
    assert tensors["first_conv.0.weight"].shape == (12, 3, 3, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"se": True}, "does not take 'se'"),
        ({"shallow": True}, "does not take 'shallow'"),
        ({"shuffle_order": "paper"}, "shuffle_order='official'"),
        ({"include_preprocessing": True}, "include_preprocessing=False"),
    ],
)
def test_arguments_the_release_lacks_are_refused(
    checkpoint_05_g3, kwargs, match
):
    with pytest.raises(ValueError, match=match):
        official.from_official_checkpoint(checkpoint_05_g3[1], 0.5, 3, **kwargs)


@pytest.mark.xdist_group("checkpoint_05_g3")
def test_a_checkpoint_file_loads_through_weights_too(checkpoint_05_g3):
    reference, path = checkpoint_05_g3
    model = ks.ShuffleNet(
        0.5, 3, weights=path, input_shape=(64, 64, 3),
        classifier_activation=None,
    )
    assert model.get_layer("stage2_unit1_shuffle").order == "official"
    images = smooth_images(2, 64, seed=13)
    assert max_differences(model, reference, images)[1] <= RELATIVE_TOLERANCE


@pytest.mark.xdist_group("checkpoint_05_g3")
def test_converted_files_load_by_entry_name_and_as_keras(
    checkpoint_05_g3, tmp_path, monkeypatch
):
    reference, path = checkpoint_05_g3
    monkeypatch.setenv("KERAS_SHUFFLENET_HOME", str(tmp_path))
    result = official.convert_official_checkpoint(path, 0.5, 3)
    name = "shufflenet_0.5x_g3.official"
    assert result["weights"] == str(tmp_path / f"{name}.weights.h5")
    assert result["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(os.listdir(tmp_path)) == [
        f"{name}.keras", f"{name}.weights.h5"
    ]  # No temporary files left behind.

    images = smooth_images(4, 64, seed=12)
    # The converted file is found by name: nothing to download.
    model = ks.ShuffleNet(
        0.5, 3, weights=name, include_top=False, pooling="avg",
        input_shape=(64, 64, 3),
    )
    with torch.no_grad():
        classifier = reference.classifier[0].weight.numpy()
        expected = reference(to_torch_bgr(images)).numpy()
    np.testing.assert_allclose(
        logits(model, images) @ classifier.T, expected, rtol=0,
        atol=RELATIVE_TOLERANCE * np.abs(expected).max(),
    )
    loaded = keras.saving.load_model(result["keras"], safe_mode=True)
    images = smooth_images(2, 224, seed=1)
    np.testing.assert_array_equal(
        logits(loaded, images), logits(result["model"], images)
    )


def test_an_official_entry_says_where_to_put_its_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_SHUFFLENET_HOME", str(tmp_path))
    with pytest.raises(OSError) as error:
        ks.ShuffleNet(1.0, 8, weights="shufflenet_1.0x_g8.official")
    message = str(error.value)
    for part in (
        "https://1drv.ms/f/s!AgaP37NGYuEXhRfQxHRseR7eSxXo",
        "ShuffleNetV1/Group8/models", "snetv1_group8_1.0x.pth.tar",
        str(tmp_path / "checkpoints" / "snetv1_group8_1.0x.pth.tar"),
    ):
        assert part in message
    # Nothing outside the package: a pip install has no tools/ folder.
    assert "tools/" not in message and ".py" not in message
