"""Tiny image fixtures for the input-pipeline tests, made with PIL.

Nothing is downloaded: every JPEG, PNG and TFRecord is written by the tests
into a temporary directory.
"""

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image


def encode(array, fmt="PNG", mode=None, quality=95):
    """Encodes a uint8 array (HxW or HxWxC) with PIL; returns bytes."""
    image = Image.fromarray(np.asarray(array, np.uint8), mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=quality) if fmt == "JPEG" else image.save(
        buffer, fmt
    )
    return buffer.getvalue()


def solid(value, height=24, width=32):
    """An RGB image whose pixels all equal ``value`` (an int or 3 ints)."""
    return np.full((height, width, 3), value, np.uint8)


def coordinate_image(height, width):
    """RGB image with red = 2 * column and green = 2 * row (sides <= 128).

    A lossless crop-and-resize of this image reveals the crop position: the
    mean red value of the output is twice the crop's centre column.
    """
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 2 * cols
    image[..., 1] = 2 * rows
    return image


def cmyk_jpeg(height=40, width=48, seed=0):
    """A CMYK JPEG and PIL's RGB decoding of it."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (4, 4, 4), dtype=np.uint8)
    cmyk = Image.fromarray(coarse, "CMYK").resize((width, height))
    buffer = io.BytesIO()
    cmyk.save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return data, rgb


def truncated_jpeg():
    """A JPEG cut off half-way: undecodable."""
    data = encode(
        solid(100, 64, 64) + np.arange(64, dtype=np.uint8)[:, None, None],
        "JPEG",
    )
    return data[: len(data) // 2]


GARBAGE = b"<html>404 Not Found</html>" * 20


def write_folder(root, counts, fmt="PNG", start_value=0):
    """Writes class folders; pixel values encode a global image index.

    Args:
        root: Directory to create.
        counts: Mapping class name -> number of images.
        fmt: "PNG" (lossless, index recoverable) or "JPEG".
        start_value: Index of the first image.

    Returns:
        List of (path, class index, image index).
    """
    written = []
    index = start_value
    for label, name in enumerate(sorted(counts)):
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        for i in range(counts[name]):
            ext = "png" if fmt == "PNG" else "jpg"
            path = os.path.join(folder, f"{i:03d}.{ext}")
            with open(path, "wb") as f:
                f.write(encode(solid(index), fmt))
            written.append((path, label, index))
            index += 1
    return written


def write_tfrecords(directory, examples, num_shards, prefix="train"):
    """Writes (encoded bytes, label) pairs round-robin into shards."""
    os.makedirs(directory, exist_ok=True)
    writers = [
        tf.io.TFRecordWriter(
            os.path.join(directory, f"{prefix}-{s:05d}-of-{num_shards:05d}")
        )
        for s in range(num_shards)
    ]
    for i, (data, label) in enumerate(examples):
        feature = {
            "image/encoded": tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[data])
            ),
            "image/class/label": tf.train.Feature(
                int64_list=tf.train.Int64List(value=[label])
            ),
        }
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        writers[i % num_shards].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    return directory
