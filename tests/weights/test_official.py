"""Tests of the official-checkpoint converter and the weights registry,
against a PyTorch model with the release's layout (official_reference)."""

import hashlib
import os
import pickle
import sys

import keras
import numpy as np
import pytest
import torch

import keras_shufflenet as ks
from keras_shufflenet.models import pretrained
from keras_shufflenet.models import shufflenet
from keras_shufflenet.weights import official

sys.path.insert(0, os.path.dirname(__file__))
from official_reference import ReferenceShuffleNetV1  # noqa: E402

RELATIVE_TOLERANCE = 1e-4


def smooth_images(n, size, seed):
    """RGB images in [0, 255]: coarse colour blobs, different per image."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, 4, 4, 3))
    reps = -(-size // 4)
    fine = np.repeat(np.repeat(coarse, reps, axis=1), reps, axis=2)
    noise = rng.normal(0, 20, (n, size, size, 3))
    images = fine[:, :size, :size] + noise
    return np.clip(images, 0, 255).astype("float32")


def to_torch_bgr(images):
    """The release's input: BGR, channels first, [0, 255] (ToBGRTensor)."""
    return torch.from_numpy(images[..., ::-1].copy()).permute(0, 3, 1, 2)


def randomized_reference(
    scale, groups, seed, size=64, pool="global", classes=1000
):
    """A reference model whose every weight and BN statistic is random.

    BN statistics start from a calibration batch of `size`x`size` images
    (so activations stay in a sane range and the logits depend on the
    image) and are then perturbed.
    """
    torch.manual_seed(seed)
    model = ReferenceShuffleNetV1(scale, groups, pool=pool, classes=classes)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 1.0  # Running stats := batch stats.
            elif isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, module.in_features**-0.5)
        model.train()(to_torch_bgr(smooth_images(4, size, seed + 1)))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                std = module.running_var.sqrt()
                module.running_mean.add_(
                    0.1 * std * torch.randn_like(std)
                )
                module.running_var.mul_(
                    torch.empty_like(std).uniform_(0.7, 1.4)
                )
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
        # Pooled features share a large common part; a classifier blind to
        # it gives different images different classes.
        captured = []
        classifier = model.classifier[0]
        hook = classifier.register_forward_hook(
            lambda module, inputs, output: captured.append(inputs[0])
        )
        model.eval()(to_torch_bgr(smooth_images(4, size, seed + 2)))
        hook.remove()
        mean = captured[0].mean(0)
        weight = classifier.weight
        weight.sub_(torch.outer(weight @ mean, mean) / mean.dot(mean))
    return model


def save_checkpoint(model, path, wrapped=True):
    """Saves like the release (DataParallel names in a dict) or bare."""
    state = model.state_dict()
    if wrapped:
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(state, path)
    return path


def logits(model, images):
    # Eager: tracing predict() costs seconds per model, more than the math.
    return keras.ops.convert_to_numpy(model(images, training=False))


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
    tensors = official.load_official_state_dict(path)
    images = smooth_images(4, 64, seed=11)
    model = ks.ShuffleNet(
        0.5, 3, shuffle_order="official", include_preprocessing=False,
        input_shape=(64, 64, 3), classifier_activation=None,
    )
    official.assign_official_weights(model, tensors)
    assert max_differences(model, reference, images)[1] <= RELATIVE_TOLERANCE

    conv1 = model.get_layer("conv1").kernel
    conv1.assign(conv1.numpy()[:, :, ::-1])  # Undo BGR -> RGB.
    assert max_differences(model, reference, images)[1] > 1e-2

    official.assign_official_weights(model, tensors)
    dwconv = model.get_layer("stage3_unit2_dwconv").kernel
    unpermuted = np.transpose(
        tensors["features.5.branch_main_1.3.weight"], official.DEPTHWISE_AXES
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
    assert "0.5x model with groups=3" in message
    assert "scale=0.5, groups=3" in message


def test_wrong_groups_names_the_configuration_it_looks_like(tmp_path):
    path = save_checkpoint(
        ReferenceShuffleNetV1(0.5, 8), tmp_path / "g8.pth.tar"
    )
    with pytest.raises(ValueError, match=r"0\.5x model with groups=8"):
        official.from_official_checkpoint(path, 0.5, 3)


@pytest.mark.xdist_group("checkpoint_05_g3")
def test_infer_official_config_reads_widths_and_groups(checkpoint_05_g3):
    tensors = official.load_official_state_dict(checkpoint_05_g3[1])
    assert official.infer_official_config(tensors) == (
        (12, 120, 240, 480), 3, 0.5
    )


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
        official.load_official_state_dict(path)
    assert str(path) in str(error.value)


def test_arbitrary_objects_are_never_unpickled(tmp_path):
    path = tmp_path / "object.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": keras.layers.ReLU}, f, protocol=2)
    with pytest.raises(ValueError, match="weights_only=True refused") as error:
        official.load_official_state_dict(path)
    assert str(path) in str(error.value)


def test_list_of_tensors_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        official.load_official_state_dict(path)


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth.tar"):
        official.from_official_checkpoint(tmp_path / "nothing.pth.tar", 0.5, 3)


@pytest.mark.xdist_group("checkpoint_05_g3")
def test_missing_torch_says_how_to_install_it(checkpoint_05_g3, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails.
    with pytest.raises(ImportError, match=r"keras_shufflenet\[torch\]"):
        official.load_official_state_dict(checkpoint_05_g3[1])


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


def test_converted_files_load_by_registry_name_and_as_keras(
    checkpoint_05_g3, tmp_path, monkeypatch
):
    reference, path = checkpoint_05_g3
    monkeypatch.setenv("KERAS_SHUFFLENET_HOME", str(tmp_path))
    result = official.convert_official_checkpoint(path, 0.5, 3)
    name = "official_imagenet_0.5x_g3"
    assert result["weights"] == str(tmp_path / f"{name}.weights.h5")
    assert result["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(os.listdir(tmp_path)) == [
        f"{name}.keras", f"{name}.weights.h5"
    ]  # No temporary files left behind.

    images = smooth_images(4, 64, seed=12)
    model = ks.ShuffleNet(
        0.5, 3, weights=name, input_shape=(64, 64, 3),
        classifier_activation=None,
    )
    assert max_differences(model, reference, images)[1] <= RELATIVE_TOLERANCE

    loaded = keras.saving.load_model(result["keras"], safe_mode=True)
    images = smooth_images(2, 224, seed=1)
    np.testing.assert_array_equal(
        logits(loaded, images), logits(result["model"], images)
    )


def test_missing_converted_weights_say_how_to_get_them(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("KERAS_SHUFFLENET_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        ks.ShuffleNet(1.0, 8, weights="official_imagenet_1.0x_g8")
    message = str(error.value)
    for part in (
        str(tmp_path / "official_imagenet_1.0x_g8.weights.h5"),
        pretrained.OFFICIAL_ONEDRIVE,
        "ShuffleNetV1/Group8/models/1.0x.pth.tar",
        "python tools/convert_official.py --checkpoint=1.0x.pth.tar "
        f"--scale=1.0 --groups=8 --output_dir={tmp_path}",
    ):
        assert part in message


def test_unknown_registry_name_lists_the_names():
    with pytest.raises(ValueError) as error:
        ks.ShuffleNet(1.0, 3, weights="imagenet_1.0x_g3")
    assert "official_imagenet_2.0x_g8" in str(error.value)


def test_weights_dir_defaults_inside_keras_home(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_SHUFFLENET_HOME", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert pretrained.weights_dir() == str(tmp_path / "keras_shufflenet")


def test_registry_holds_the_eight_release_models_and_their_errors():
    assert sorted(
        (entry.scale, entry.groups) for entry in pretrained.REGISTRY.values()
    ) == sorted(shufflenet.OFFICIAL_WIDTHS)
    for entry in pretrained.REGISTRY.values():
        assert entry.architecture == {
            "shuffle_order": "official", "include_preprocessing": False
        }
        # Reported errors are those of top-1 and top-5, in percent.
        assert 0 < entry.top5_error < entry.top1_error < 50
        assert entry.sha256 is None or len(entry.sha256) == 64
    errors = {
        (e.scale, e.groups): e.top1_error for e in pretrained.REGISTRY.values()
    }
    for groups in (3, 8):
        # Wider models err less.
        by_scale = [errors[(s, groups)] for s in (0.5, 1.0, 1.5, 2.0)]
        assert by_scale == sorted(by_scale, reverse=True)
    best = pretrained.get("official_imagenet_2.0x_g3")
    assert (best.top1_accuracy, best.top5_accuracy) == (74.1, 91.4)
    assert (best.flops, best.params) == (524_000_000, 5_400_000)
