"""Tests of the training stream's positions (exact resume) and of bad data:
counted, named, skipped, and refused past `data.max_bad_fraction`.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_shufflenet import data
from tests.data import data_fixtures as fx


def _folder_with_bad_files(root):
    """12 good PNGs (indices 0..11) and every kind of odd or bad file."""
    fx.write_folder(root, {"a": 6, "b": 6})
    bad = {
        root / "a" / "garbage.jpg": fx.GARBAGE,
        root / "b" / "truncated.jpg": fx.truncated_jpeg(),
        root / "b" / "empty.png": b"",
    }
    odd = {
        # Decodable, only unusual: kept, as RGB.
        root / "a" / "cmyk.jpg": fx.cmyk_jpeg()[0],
        root / "a" / "gray.jpg": fx.encode(np.full((24, 32), 200), "JPEG"),
        root / "b" / "png_named.jpg": fx.encode(fx.solid(250)),
    }
    for path, payload in {**bad, **odd}.items():
        path.write_bytes(payload)
    return sorted(str(p) for p in bad)


def _stream(pipeline, batches, start=None, batch=4):
    dataset = pipeline.dataset(True, batch, start=start, with_position=True)
    return list(dataset.take(batches).as_numpy_iterator())


def _tfrecord_pipeline(tmp_path):
    examples = [(fx.encode(fx.solid(i)), i % 3) for i in range(20)]
    examples[7] = (fx.GARBAGE, 1)
    directory = fx.write_tfrecords(str(tmp_path / "rec"), examples, 3)
    config = data.InputConfig(
        source="tfrecord", train_path=directory, num_classes=3,
        label_offset=0, image_size=16, shuffle_buffer_size=8,
        max_bad_fraction=0.1,
    )
    return data.InputPipeline(config)


def _folder_pipeline(tmp_path):
    _folder_with_bad_files(tmp_path)
    config = data.InputConfig(
        source="folder", train_path=str(tmp_path), image_size=16,
        max_bad_fraction=0.5,
    )
    return data.InputPipeline(config)


def _digits_pipeline(tmp_path):
    return data.InputPipeline(data.InputConfig(source="digits", image_size=16))


@pytest.mark.parametrize(
    "make", [_digits_pipeline, _folder_pipeline, _tfrecord_pipeline],
    ids=["digits", "folder-with-bad-files", "tfrecord-with-a-bad-record"],
)
def test_stream_restarted_after_its_last_position_continues_identically(
    tmp_path, make
):
    pipeline = make(tmp_path)
    # Long enough to cross epoch boundaries of the small sources.
    whole = _stream(pipeline, 14)
    for cut in (3, 7):
        last = whole[cut - 1][2][-1]
        resumed = _stream(pipeline, 14 - cut, start=(last[0], last[1] + 1))
        for expected, got in zip(whole[cut:], resumed, strict=True):
            for a, b in zip(expected, got):
                np.testing.assert_array_equal(a, b)


def test_every_epoch_reads_each_good_example_once_in_a_new_order(tmp_path):
    pipeline = _folder_pipeline(tmp_path)
    good = 15  # 12 PNGs, the CMYK and grey JPEGs, the misnamed PNG.
    positions = np.concatenate([b[2] for b in _stream(pipeline, 3 * good // 4)])
    epochs = [positions[positions[:, 0] == e, 1] for e in range(2)]
    # Positions count records: the 3 bad files take places but never
    # reach a batch.
    for indices in epochs:
        assert len(indices) == good == len(set(indices.tolist()))
        assert indices.max() < good + 3
    assert epochs[0].tolist() != epochs[1].tolist()


def test_undecodable_files_are_named_and_skipped_and_odd_ones_kept(tmp_path):
    bad = _folder_with_bad_files(tmp_path)
    config = data.InputConfig(
        source="folder", eval_path=str(tmp_path), image_size=16,
        max_bad_fraction=0.5,
    )
    pipeline = data.InputPipeline(config)
    images = [
        x[w > 0] for x, _, w in pipeline.dataset(False, 4).as_numpy_iterator()
    ]
    images = np.concatenate(images)
    assert len(images) == 15
    assert pipeline.bad_image_count == 3
    assert sorted(pipeline.bad_image_names) == bad
    # The grey JPEG becomes three equal channels, the misnamed PNG decodes.
    values = sorted(images[:, 8, 8].tolist())
    assert [200, 200, 200] in [[round(c / 2) * 2 for c in v] for v in values]
    assert [250, 250, 250] in values
    pipeline.check_bad_images()  # 3 of 18 is within 0.5.


def test_bad_tfrecords_are_named_by_their_place_in_the_epoch(tmp_path):
    pipeline = _tfrecord_pipeline(tmp_path)
    positions = np.concatenate([b[2] for b in _stream(pipeline, 4)])
    names = pipeline.bad_image_names
    # Read ahead, the next epochs' copies may be named too.
    places = [
        tuple(int(v) for v in n.rsplit("record ", 1)[1].split(" of epoch "))
        for n in names
    ]
    assert all(n.startswith("tfrecord train_path record ") for n in names)
    (index,) = [i for i, epoch in places if epoch == 0]
    assert index not in positions[positions[:, 0] == 0, 1]
    assert sorted(positions[positions[:, 0] == 0, 1]) == [
        i for i in range(20) if i != index
    ][:16]


def test_more_bad_images_than_max_bad_fraction_stop_with_a_clear_error(
    tmp_path,
):
    bad = _folder_with_bad_files(tmp_path)
    config = data.InputConfig(
        source="folder", eval_path=str(tmp_path), image_size=16,
        max_bad_fraction=0.1,
    )
    pipeline = data.InputPipeline(config)
    for _ in pipeline.dataset(False, 4):
        pass
    with pytest.raises(data.BadDataError) as error:
        pipeline.check_bad_images()
    message = str(error.value)
    assert "3 of 18 images read (16.7%)" in message
    assert "data.max_bad_fraction=0.1" in message
    assert all(path in message for path in bad)


def test_max_bad_fraction_outside_zero_to_one_is_refused():
    config = data.InputConfig(source="digits", max_bad_fraction=1.5)
    with pytest.raises(ValueError, match="max_bad_fraction=1.5"):
        data.InputPipeline(config)


def test_training_augmentation_is_a_function_of_the_seed_alone():
    image = tf.constant(fx.encode(fx.coordinate_image(40, 48)))
    seed = tf.constant([3, 4], tf.int64)
    first = data.preprocess_for_train(image, 16, (0.1, 1.0), seed=seed)
    tf.random.uniform([7])  # Global generator state does not matter.
    again = data.preprocess_for_train(image, 16, (0.1, 1.0), seed=seed)
    other = data.preprocess_for_train(
        image, 16, (0.1, 1.0), seed=tf.constant([3, 5], tf.int64)
    )
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
