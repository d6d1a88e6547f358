"""Tests for the tf.data input pipelines in keras_shufflenet.data."""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image

from keras_shufflenet import data
from keras_shufflenet.data import config as data_config
from keras_shufflenet.data import preprocessing
from tests.data import data_fixtures as fx


def _collect_eval(dataset):
    """Returns (images, labels) of the real rows and the batch count."""
    images, labels, batches = [], [], 0
    for x, y, w in dataset:
        batches += 1
        keep = w.numpy() > 0
        images.append(x.numpy()[keep])
        labels.append(y.numpy()[keep])
    return np.concatenate(images), np.concatenate(labels), batches


def _folder_config(root, **kwargs):
    kwargs.setdefault("image_size", 16)
    return data.InputConfig(
        source="folder", train_path=root, eval_path=root, **kwargs
    )


# ---------------------------------------------------------------- crops ----


def test_default_min_crop_area_is_049_below_1x_and_008_from_1x():
    assert data_config.default_min_crop_area(0.25) == 0.49
    assert data_config.default_min_crop_area(0.5) == 0.49
    assert data_config.default_min_crop_area(1.0) == 0.08
    assert data_config.default_min_crop_area(2.0) == 0.08
    config = data.InputConfig(name="x", model_scale=0.5)
    assert config.area_range == (0.49, 1.0)
    with pytest.raises(ValueError, match="scale=0"):
        data_config.default_min_crop_area(0)


def test_train_crop_area_and_aspect_ratio_stay_within_bounds():
    shape = tf.constant([375, 500, 3])
    sample = tf.function(
        lambda: preprocessing.sample_crop_window(shape, (0.25, 1.0), (3 / 4, 4 / 3))
    )
    windows = np.array([sample().numpy() for _ in range(400)])
    y, x, h, w = windows.T
    assert (y >= 0).all() and (x >= 0).all()
    assert (y + h <= 375).all() and (x + w <= 500).all()
    area = h * w / (375 * 500)
    # Integer rounding of the sides may shave a little below the minimum.
    assert area.min() >= 0.25 * 0.98 and area.max() <= 1.0
    ratio = w / h
    assert ratio.min() >= 3 / 4 * 0.98 and ratio.max() <= 4 / 3 * 1.02
    # The crops really vary over the range.
    assert area.min() < 0.4 and area.max() > 0.8
    assert ratio.min() < 0.85 and ratio.max() > 1.2


def test_crop_fallback_clamps_extreme_aspect_ratio_around_centre():
    # A 10x200 strip cannot hold a 3/4..4/3 crop of 50% area: fallback.
    window = preprocessing.sample_crop_window(
        tf.constant([10, 200, 3]), (0.5, 1.0), (3 / 4, 4 / 3)
    ).numpy()
    np.testing.assert_array_equal(window, [0, 93, 10, 13])


def test_eval_window_is_224_of_256_with_equal_margins_for_imagenet_size():
    window = preprocessing.eval_crop_window(tf.constant([375, 500, 3])).numpy()
    # 375 * 224 / 256 = 328.1: nearest odd 329 (375 is odd), even 328.
    np.testing.assert_array_equal(window, [23, 86, 329, 328])
    y, x, h, w = window
    assert 375 - (y + h) == y and 500 - (x + w) == x


@pytest.mark.parametrize("height,width", [(80, 120), (75, 100), (101, 64)])
def test_eval_crop_is_exactly_centred(height, width):
    image = fx.encode(fx.coordinate_image(height, width), "PNG")
    out = data.preprocess_for_eval(tf.constant(image), 28).numpy()
    out = out.astype(np.float64)
    assert out.shape == (28, 28, 3)
    # Red is 2 * column, green 2 * row: means give the crop centre. A crop
    # off by half a pixel would move a mean by 1.0; uint8 rounding (half
    # up) may move it by up to 0.5.
    assert abs(out[..., 0].mean() - (width - 1)) <= 0.5
    assert abs(out[..., 1].mean() - (height - 1)) <= 0.5
    # Mirror symmetry about the image centre, up to uint8 rounding.
    pair_sums = out[:, :, 0] + out[:, ::-1, 0]
    np.testing.assert_allclose(pair_sums, 2 * (width - 1), atol=1.01)
    # The crop spans 224/256 of the shorter side.
    side = min(height, width) * 224 / 256
    span = (out[0, -1, 0] - out[0, 0, 0]) / 2 * 28 / 27
    assert abs(span - side) < 1.5


def test_resize_first_with_antialias_is_pillows_resize_and_centre_crop():
    """How mmpretrain and pytorchcv evaluate: Pillow's bilinear resize of
    the shorter side to 256, then the central 224."""
    from PIL import Image

    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (12, 16, 3))
    image = np.clip(
        np.kron(coarse, np.ones((25, 25, 1))) + rng.normal(0, 8, (300, 400, 3)),
        0, 255,
    ).astype(np.uint8)
    out = data.preprocess_for_eval(
        tf.constant(fx.encode(image, "PNG")), 224, 224 / 256,
        resize_first=True, antialias=True,
    ).numpy().astype(float)
    resized = np.asarray(
        Image.fromarray(image).resize((341, 256), Image.BILINEAR), float
    )
    expected = resized[16:240, 58:282]
    assert np.abs(out - expected).max() <= 3
    assert np.abs(out - expected).mean() < 0.5
    # The default path crops first and does not filter: another resampling.
    fast = data.preprocess_for_eval(tf.constant(fx.encode(image, "PNG")), 224)
    assert np.abs(fast.numpy() - expected).mean() > 0.5


def test_training_preprocessing_output_is_uint8_fixed_size_and_in_range():
    image = fx.encode(fx.coordinate_image(60, 80), "JPEG")
    out = data.preprocess_for_train(
        tf.constant(image), 32, (0.08, 1.0), color_jitter=0.4
    )
    assert out.dtype == tf.uint8 and out.shape == (32, 32, 3)
    plain = data.preprocess_for_train(tf.constant(image), 32, (1.0, 1.0))
    # Red encodes the column: a full-image crop spans columns 0..79.
    red = plain.numpy()[..., 0].astype(int)
    assert red.max() - red.min() > 120
    assert red.min() <= 10 and red.max() >= 148


def test_png_takes_the_decode_then_crop_path_with_exact_pixels():
    image = fx.encode(fx.solid((10, 200, 30), 30, 40), "PNG")
    out = data.preprocess_for_train(tf.constant(image), 8, (0.3, 1.0))
    np.testing.assert_array_equal(out.numpy().reshape(-1, 3)[0], [10, 200, 30])
    assert (out.numpy() == [10, 200, 30]).all()


def test_cmyk_jpeg_decodes_to_the_same_rgb_as_pil():
    encoded, rgb = fx.cmyk_jpeg()
    out = data.preprocess_for_eval(tf.constant(encoded), 35, 1.0).numpy()
    assert out.shape == (35, 35, 3)
    window = preprocessing.eval_crop_window(tf.constant(rgb.shape), 1.0).numpy()
    y, x, h, w = window
    expected = tf.image.resize(rgb[y : y + h, x : x + w], [35, 35]).numpy()
    assert np.abs(out - expected).mean() < 3.0


def test_grayscale_jpeg_decodes_to_three_equal_channels():
    gray = np.tile(np.arange(0, 240, 6, dtype=np.uint8), (30, 1))
    encoded = fx.encode(gray, "JPEG", mode="L")
    out = data.preprocess_for_eval(tf.constant(encoded), 16).numpy()
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert out[..., 0].max() - out[..., 0].min() > 100


# -------------------------------------------------------------- folders ----


def test_folder_labels_follow_sorted_class_names(tmp_path):
    written = fx.write_folder(tmp_path, {"zebra": 2, "ant": 3, "moth": 1})
    pipeline = data.InputPipeline(_folder_config(str(tmp_path)))
    assert pipeline.num_classes == 3
    assert pipeline.num_examples(True) == 6
    images, labels, _ = _collect_eval(pipeline.dataset(False, 4))
    # The solid pixel value identifies the file; its label is the index of
    # its folder in sorted order (ant=0, moth=1, zebra=2).
    got = sorted(zip(images[:, 0, 0, 0].tolist(), labels.tolist()))
    assert got == sorted((index, label) for _, label, index in written)
    assert [label for _, label, _ in written] == [0, 0, 0, 1, 2, 2]


def test_training_batches_are_uint8_static_shape_and_drop_remainder(tmp_path):
    fx.write_folder(tmp_path, {"a": 5, "b": 2}, fmt="JPEG")
    config = _folder_config(str(tmp_path), repeat=False)
    pipeline = data.InputPipeline(config)
    dataset = pipeline.dataset(True, 3)
    images_spec, labels_spec = dataset.element_spec
    assert images_spec.shape.as_list() == [3, 16, 16, 3]
    assert images_spec.dtype == tf.uint8
    assert labels_spec.shape.as_list() == [3] and labels_spec.dtype == tf.int32
    sizes = [x.shape[0] for x, _ in dataset]
    assert sizes == [3, 3]  # 7 examples: the last one is dropped.
    assert pipeline.steps_per_epoch(True, 3) == 2


@pytest.mark.parametrize(
    "count,batches,last_weights",
    [
        (7, 3, [1, 0, 0]),
        (6, 2, [1, 1, 1]),
    ],
)
def test_eval_pads_last_batch_and_counts_every_example_once(
    tmp_path, count, batches, last_weights
):
    fx.write_folder(tmp_path, {"a": count - 2, "b": 2})
    pipeline = data.InputPipeline(_folder_config(str(tmp_path)))
    dataset = pipeline.dataset(False, 3)
    weights = [w.numpy().tolist() for _, _, w in dataset]
    assert len(weights) == batches == pipeline.steps_per_epoch(False, 3)
    assert weights[-1] == last_weights
    assert sum(map(sum, weights)) == count
    images, _, _ = _collect_eval(dataset)
    assert sorted(images[:, 0, 0, 0].tolist()) == list(range(count))
    spec = dataset.element_spec
    assert spec[0].shape.as_list() == [3, 16, 16, 3]
    assert spec[2].dtype == tf.float32


def test_corrupt_images_are_skipped_and_counted_in_train_and_eval(tmp_path):
    fx.write_folder(tmp_path, {"a": 3, "b": 3})
    with open(tmp_path / "a" / "garbage.jpg", "wb") as f:
        f.write(fx.GARBAGE)
    with open(tmp_path / "b" / "truncated.jpg", "wb") as f:
        f.write(fx.truncated_jpeg())
    with open(tmp_path / "b" / "empty.png", "wb") as f:
        f.write(b"")
    pipeline = data.InputPipeline(_folder_config(str(tmp_path), repeat=False))
    assert pipeline.num_examples(False) == 9
    images, _, _ = _collect_eval(pipeline.dataset(False, 4))
    assert sorted(images[:, 0, 0, 0].tolist()) == list(range(6))
    assert pipeline.bad_image_count == 3
    seen = sum(x.shape[0] for x, _ in pipeline.dataset(True, 2))
    assert seen == 6
    assert pipeline.bad_image_count == 6  # Counted again on each read.


def test_two_input_pipelines_cover_every_file_exactly_once(tmp_path):
    fx.write_folder(tmp_path, {"a": 6, "b": 5})
    pipeline = data.InputPipeline(_folder_config(str(tmp_path)))
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(2, pipeline_id, 2)
        images, _, _ = _collect_eval(pipeline.dataset(False, 4, context))
        seen.append(set(images[:, 0, 0, 0].tolist()))
        # Global batch 4 over 2 replicas: per-replica batches of 2.
        batch = pipeline.dataset(False, 4, context).element_spec[0].shape[0]
        assert batch == 2
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == set(range(11))
    assert len(seen[0]) + len(seen[1]) == 11


def test_dataset_fn_feeds_distribute_datasets_from_function(
    tmp_path, mirrored_strategy
):
    fx.write_folder(tmp_path, {"a": 4, "b": 4})
    pipeline = data.InputPipeline(_folder_config(str(tmp_path)))
    strategy = mirrored_strategy
    dataset = strategy.distribute_datasets_from_function(
        pipeline.dataset_fn(training=True, global_batch_size=4)
    )
    images, _labels = next(iter(dataset))
    per_replica = strategy.experimental_local_results(images)
    assert [x.shape.as_list() for x in per_replica] == [[2, 16, 16, 3]] * 2
    assert all(x.dtype == tf.uint8 for x in per_replica)


# ------------------------------------------------------------ TFRecords ----


def _tfrecord_examples(count):
    return [(fx.encode(fx.solid(i), "PNG"), i % 5 + 1) for i in range(count)]


@pytest.mark.parametrize("num_shards", [1, 4])
def test_tfrecord_labels_are_shifted_by_offset_and_shards_split_once(
    tmp_path, num_shards
):
    examples = _tfrecord_examples(10)  # Labels 1..5, the TPU layout.
    directory = fx.write_tfrecords(str(tmp_path / "rec"), examples, num_shards)
    config = data.InputConfig(
        source="tfrecord", eval_path=directory, num_classes=5, image_size=8
    )
    pipeline = data.InputPipeline(config)
    assert pipeline.num_examples(False) == 10
    found = {}
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(2, pipeline_id, 2)
        images, labels, _ = _collect_eval(pipeline.dataset(False, 6, context))
        for index, label in zip(images[:, 0, 0, 0].tolist(), labels.tolist()):
            assert index not in found
            found[index] = label
    assert found == {i: i % 5 for i in range(10)}


def test_tfrecord_zero_based_labels_with_label_offset_0(tmp_path):
    examples = [(data_, label - 1) for data_, label in _tfrecord_examples(5)]
    directory = fx.write_tfrecords(str(tmp_path), examples, 2)
    config = data.InputConfig(
        source="tfrecord",
        train_path=os.path.join(directory, "train-*"),
        num_classes=5,
        label_offset=0,
        image_size=8,
        repeat=False,
    )
    pipeline = data.InputPipeline(config)
    labels = np.concatenate([y.numpy() for _, y in pipeline.dataset(True, 1)])
    assert sorted(labels.tolist()) == [0, 1, 2, 3, 4]


def test_tfrecord_label_out_of_range_raises_before_training(tmp_path):
    directory = fx.write_tfrecords(
        str(tmp_path), [(fx.encode(fx.solid(1), "PNG"), 0)], 1
    )
    config = data.InputConfig(
        source="tfrecord", train_path=directory, num_classes=5
    )
    with pytest.raises(ValueError, match=r"run 0\.\.0.*label_offset=1"):
        data.InputPipeline(config)
    config.label_offset, config.num_classes = 0, 5
    data.InputPipeline(config)  # Valid with 0-based labels.
    directory = fx.write_tfrecords(
        str(tmp_path / "big"), [(fx.encode(fx.solid(1), "PNG"), 6)], 1
    )
    config = data.InputConfig(
        source="tfrecord", train_path=directory, num_classes=5
    )
    with pytest.raises(ValueError, match=r"must lie in 1\.\.5"):
        data.InputPipeline(config)


def test_tfrecord_missing_and_empty_sources_raise(tmp_path):
    pattern = str(tmp_path / "nothing-*")
    config = data.InputConfig(
        source="tfrecord", train_path=pattern, num_classes=5
    )
    with pytest.raises(FileNotFoundError, match="nothing-"):
        data.InputPipeline(config)
    directory = fx.write_tfrecords(str(tmp_path / "empty"), [], 1)
    config.train_path = directory
    with pytest.raises(ValueError, match="hold no examples"):
        data.InputPipeline(config)
    with pytest.raises(ValueError, match="num_classes"):
        data.InputPipeline(data.InputConfig(source="tfrecord", eval_path="x"))


# ----------------------------------------------------------------- TFDS ----


def test_tfds_source_reads_mocked_tf_flowers(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    config = data.InputConfig(
        source="tfds",
        name="tf_flowers",
        data_dir=str(tmp_path),
        train_split="train",
        eval_split="train",
        image_size=16,
    )
    with tfds.testing.mock_data(num_examples=5):
        pipeline = data.InputPipeline(config)
        assert pipeline.num_classes == 5
        assert pipeline.num_examples(False) == 5
        images, labels, batches = _collect_eval(pipeline.dataset(False, 2))
        train = next(iter(pipeline.dataset(True, 4)))
    assert images.shape == (5, 16, 16, 3) and batches == 3
    assert images.dtype == np.uint8
    assert ((labels >= 0) & (labels < 5)).all()
    assert train[0].shape == (4, 16, 16, 3)
    assert pipeline.bad_image_count == 0


def test_tfds_imagenet2012_uses_manual_dir_and_has_1000_classes(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    manual = tmp_path / "manual"
    manual.mkdir()
    config = data.InputConfig(
        source="tfds",
        name="imagenet2012",
        data_dir=str(tmp_path),
        manual_dir=str(manual),
        image_size=8,
        num_classes=1000,
    )
    with tfds.testing.mock_data(num_examples=3):
        pipeline = data.InputPipeline(config)
        images, labels, _ = _collect_eval(pipeline.dataset(False, 2))
    assert pipeline.num_classes == 1000
    assert images.shape == (3, 8, 8, 3)
    assert ((labels >= 0) & (labels < 1000)).all()
    config.manual_dir = str(tmp_path / "no_such_dir")
    with pytest.raises(FileNotFoundError, match="manual_dir.*no_such_dir"):
        data.InputPipeline(config)


def test_tfds_class_count_mismatch_raises(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    config = data.InputConfig(
        source="tfds",
        name="tf_flowers",
        data_dir=str(tmp_path),
        num_classes=1000,
    )
    with (
        tfds.testing.mock_data(num_examples=2),
        pytest.raises(ValueError, match="num_classes=1000.*5 classes"),
    ):
        data.InputPipeline(config)


# --------------------------------------------------------------- digits ----


def test_digits_split_is_deterministic_stratified_and_uint8():
    (x1, _y1), (xe, ye) = data.load_digits_arrays(32)
    (x2, _), _ = data.load_digits_arrays(32)
    assert x1.shape == (1437, 32, 32, 3) and xe.shape == (360, 32, 32, 3)
    assert x1.dtype == np.uint8 and x1.max() == 255 and x1.min() == 0
    np.testing.assert_array_equal(x1, x2)
    assert set(collections.Counter(ye).values()) <= {35, 36, 37}
    pipeline = data.InputPipeline(
        data.InputConfig(source="digits", image_size=32)
    )
    assert pipeline.num_classes == 10 and pipeline.num_examples(False) == 360
    _images, labels, batches = _collect_eval(pipeline.dataset(False, 64))
    assert batches == 6 and len(labels) == 360
    np.testing.assert_array_equal(np.sort(labels), np.sort(ye))
    x, _y = next(iter(pipeline.dataset(True, 16)))
    assert x.shape == (16, 32, 32, 3) and x.dtype == tf.uint8


# --------------------------------------------------------------- errors ----


def test_missing_folder_raises_file_not_found_naming_path(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="train_path.*nope"):
        data.InputPipeline(
            data.InputConfig(source="folder", train_path=missing)
        )


def test_empty_folder_one_class_and_empty_class_folder_raise(tmp_path):
    (tmp_path / "root").mkdir()
    with pytest.raises(ValueError, match="root' holds 0 class folder"):
        data.InputPipeline(_folder_config(str(tmp_path / "root")))
    fx.write_folder(tmp_path / "root", {"a": 2})
    with pytest.raises(ValueError, match=r"1 class folder\(s\) \['a'\]; a "
                       "classifier needs at least two"):
        data.InputPipeline(_folder_config(str(tmp_path / "root")))
    (tmp_path / "root" / "b").mkdir()
    with pytest.raises(ValueError, match="b' .*holds no"):
        data.InputPipeline(_folder_config(str(tmp_path / "root")))


def test_eval_classes_differing_from_train_classes_raise(tmp_path):
    fx.write_folder(tmp_path / "train", {"a": 1, "b": 1, "c": 1})
    fx.write_folder(tmp_path / "val", {"a": 1, "b": 1})
    config = data.InputConfig(
        source="folder",
        train_path=str(tmp_path / "train"),
        eval_path=str(tmp_path / "val"),
    )
    with pytest.raises(ValueError, match=r"val.*\(2 classes\).*\(3\)"):
        data.InputPipeline(config)


def test_num_classes_mismatch_raises(tmp_path):
    fx.write_folder(tmp_path, {"a": 1, "b": 1})
    with pytest.raises(ValueError, match="num_classes=10 .* 2 classes"):
        data.InputPipeline(_folder_config(str(tmp_path), num_classes=10))


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"source": "csv"}, "source='csv'"),
        ({"source": "tfds"}, "name"),
        ({"source": "folder"}, "train_path"),
        ({"name": "x", "min_crop_area": 0.0}, "min_crop_area=0.0"),
        (
            {"name": "x", "min_crop_area": 0.9, "max_crop_area": 0.5},
            "max_crop_area",
        ),
        ({"name": "x", "crop_fraction": 1.5}, "crop_fraction=1.5"),
        ({"name": "x", "aspect_ratio_range": (2.0, 1.0)}, "aspect_ratio_range"),
        ({"name": "x", "image_size": 0}, "image_size=0"),
        ({"name": "x", "color_jitter": 1.5}, "color_jitter=1.5"),
    ],
)
def test_invalid_config_raises_naming_the_argument(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        data.InputConfig(**kwargs).validate()


def test_missing_split_path_raises_when_that_split_is_requested(tmp_path):
    fx.write_folder(tmp_path, {"a": 1, "b": 1})
    pipeline = data.InputPipeline(
        data.InputConfig(source="folder", train_path=str(tmp_path))
    )
    with pytest.raises(ValueError, match="eval_path"):
        pipeline.dataset(False, 2)


def test_cache_reshuffles_every_epoch_and_keeps_each_example_once(tmp_path):
    fx.write_folder(tmp_path, {"a": 12, "b": 12})
    config = _folder_config(str(tmp_path), cache=True)
    pipeline = data.InputPipeline(config)
    # Train crops of solid PNGs keep the index; 24 examples, 6 batches.
    seen = np.concatenate(
        [x.numpy()[:, 0, 0, 0] for x, _ in pipeline.dataset(True, 4).take(12)]
    ).tolist()
    epochs = [seen[:24], seen[24:]]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(24))
    assert epochs[0] != epochs[1]
    # The stream is a function of the seed: built again, it is the same.
    again = [x.numpy()[:, 0, 0, 0] for x, _ in pipeline.dataset(True, 4).take(6)]
    assert np.concatenate(again).tolist() == epochs[0]


def test_color_jitter_scales_brightness_within_strength():
    gray = tf.fill([8, 8, 3], 100.0)
    values = np.array(
        [preprocessing._color_jitter(gray, 0.4).numpy()[0, 0, 0] for _ in range(200)]
    )
    # Contrast and saturation leave a flat grey image unchanged, so only
    # the brightness factor in [0.6, 1.4] remains.
    assert values.min() >= 60.0 - 1e-3 and values.max() <= 140.0 + 1e-3
    assert values.max() - values.min() > 40.0


def test_tfds_unprepared_or_unknown_dataset_raises_before_training(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    config = data.InputConfig(
        source="tfds", name="tf_flowers", data_dir=str(tmp_path)
    )
    with pytest.raises(FileNotFoundError, match="'tf_flowers' is not prep"):
        data.InputPipeline(config)
    config.name = "no_such_dataset_xyz"
    with pytest.raises(ValueError, match="name='no_such_dataset_xyz'"):
        data.InputPipeline(config)


def test_skip_bad_images_false_fails_loudly_on_a_corrupt_file(tmp_path):
    fx.write_folder(tmp_path, {"a": 1, "b": 1})
    with open(tmp_path / "a" / "garbage.jpg", "wb") as f:
        f.write(fx.GARBAGE)
    config = _folder_config(str(tmp_path), skip_bad_images=False)
    pipeline = data.InputPipeline(config)
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(pipeline.dataset(False, 2))
    config.skip_bad_images = True
    images, _, _ = _collect_eval(data.InputPipeline(config).dataset(False, 2))
    assert len(images) == 2


def _source_flags(argv):
    values = flags.FlagValues()
    data.define_input_flags("Where the images are.", flag_values=values)
    values(["program", *argv])
    return values


def test_source_flags_are_spelled_like_the_config_flags():
    values = _source_flags(["--data.source=folder", "--data.eval_path=val"])
    config = data.input_config_from_flags(64, flag_values=values)
    assert (config.source, config.eval_path, config.image_size) == (
        "folder", "val", 64
    )


def test_images_of_mixed_sizes_come_out_at_the_model_size(tmp_path):
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate([(40, 90), (120, 60), (33, 33), (300, 200)]):
        folder = tmp_path / "ab"[k % 2]
        folder.mkdir(exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{k}.jpg")
    pipeline = data.InputPipeline(
        data.InputConfig(source="folder", train_path=str(tmp_path),
                         eval_path=str(tmp_path), image_size=48)
    )
    images, labels = next(iter(pipeline.dataset(True, 4)))
    assert images.shape == (4, 48, 48, 3) and sorted(labels.numpy()) == [
        0, 0, 1, 1
    ]
    images, _, weights = next(iter(pipeline.dataset(False, 4)))
    assert images.shape == (4, 48, 48, 3) and weights.numpy().sum() == 4
