"""The paper's preprocessing inside tf.data: random crop with scale and
aspect-ratio augmentation for training, a single centre crop for
evaluation (section 4; the official release's transforms).
"""

import tensorflow as tf

from keras_shufflenet.data.config import DEFAULT_ASPECT_RATIO_RANGE
from keras_shufflenet.data.config import DEFAULT_CROP_FRACTION


def draw_seed(seed=None):
    """`seed`, or a stateless `[2]` seed drawn from the global generator."""
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    return seed


def sample_crop_window(
    image_shape, area_range, aspect_ratio_range, seed=None
):
    """Samples a random crop window for Inception-style scale augmentation.

    The window covers ``area_range`` of the image with width/height in
    ``aspect_ratio_range``. If sampling fails after 10 attempts, the whole
    image is used, narrowed around its centre to the nearest allowed aspect
    ratio.

    Reference:
        Zhang et al., ShuffleNet, section 4 ("less aggressive scale
        augmentation").

    Args:
        image_shape: int32 tensor ``[height, width, channels]``.
        area_range: ``(min, max)`` fraction of the image area.
        aspect_ratio_range: ``(min, max)`` of crop width / height.
        seed: Stateless ``[2]`` seed: one seed, one window. Defaults to
            None: one drawn from the global generator.

    Returns:
        int32 tensor ``[offset_y, offset_x, height, width]``.
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape,
        seed=draw_seed(seed),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        min_object_covered=area_range[0],
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    offset_y, offset_x = begin[0], begin[1]
    height, width = size[0], size[1]
    # Sampling fell back to the full image: clamp its aspect ratio.
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    new_w = tf.minimum(w, tf.floor(h * aspect_ratio_range[1]))
    new_h = tf.minimum(h, tf.floor(w / aspect_ratio_range[0]))
    new_w = tf.cast(tf.maximum(new_w, 1.0), tf.int32)
    new_h = tf.cast(tf.maximum(new_h, 1.0), tf.int32)
    offset_y += (height - new_h) // 2
    offset_x += (width - new_w) // 2
    return tf.stack([offset_y, offset_x, new_h, new_w])


def _decode_window(image_bytes, window_fn):
    """Decodes only ``window_fn(shape)`` of an encoded image.

    JPEGs use the fused ``decode_and_crop_jpeg``; other formats (PNG, GIF,
    BMP) are decoded fully, then cropped. Grayscale and CMYK become RGB.

    Args:
        image_bytes: Scalar string tensor of encoded image bytes.
        window_fn: Maps the int32 ``[h, w, c]`` shape to a
            ``[y, x, height, width]`` window.

    Returns:
        ``(crop, shape)``: uint8 ``[height, width, 3]`` and the full image's
        int32 ``[h, w, c]`` shape.
    """

    def jpeg():
        shape = tf.io.extract_jpeg_shape(image_bytes)
        window = window_fn(shape)
        crop = tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)
        return crop, shape

    def other():
        image = tf.io.decode_image(
            image_bytes, channels=3, dtype=tf.uint8, expand_animations=False
        )
        shape = tf.shape(image)
        window = window_fn(shape)
        crop = tf.slice(
            image,
            tf.stack([window[0], window[1], 0]),
            tf.stack([window[2], window[3], 3]),
        )
        return crop, shape

    crop, shape = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    crop.set_shape([None, None, 3])
    return crop, shape


def to_uint8(image):
    """Rounds a float image already within [0, 255] to uint8."""
    return tf.cast(image + 0.5, tf.uint8)


def _color_jitter(image, strength, seed=None):
    """Random brightness, contrast and saturation on a float RGB image."""
    low, high = 1.0 - strength, 1.0 + strength
    factors = tf.random.stateless_uniform([3], draw_seed(seed), low, high)
    image = image * factors[0]
    gray = tf.image.rgb_to_grayscale(image)
    image = (image - tf.reduce_mean(gray)) * factors[1] + tf.reduce_mean(gray)
    gray = tf.image.rgb_to_grayscale(image)
    image = (image - gray) * factors[2] + gray
    return tf.clip_by_value(image, 0.0, 255.0)


def preprocess_for_train(
    image_bytes,
    image_size=224,
    area_range=(0.08, 1.0),
    aspect_ratio_range=DEFAULT_ASPECT_RATIO_RANGE,
    color_jitter=0.0,
    seed=None,
):
    """Random-crops, resizes and flips one encoded training image.

    Every random choice is drawn from ``seed`` with stateless ops, so an
    example's augmentation depends on its seed alone, not on the order in
    which parallel workers reach it: a resumed run repeats it exactly.

    Reference:
        Zhang et al., ShuffleNet, section 4 (scale augmentation).

    Args:
        image_bytes: Scalar string tensor, an encoded JPEG/PNG/GIF/BMP.
        image_size: Output side. Defaults to 224.
        area_range: Crop area fractions. Defaults to (0.08, 1.0).
        aspect_ratio_range: Crop width/height range. Defaults to 3/4-4/3.
        color_jitter: Jitter strength, 0 disables. Defaults to 0.0.
        seed: Stateless ``[2]`` int seed of this example. Defaults to None:
            one drawn from the global generator.

    Returns:
        uint8 tensor ``[image_size, image_size, 3]`` in [0, 255].
    """
    crop_seed, jitter_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(draw_seed(seed), 3)
    )
    crop, _ = _decode_window(
        image_bytes,
        lambda shape: sample_crop_window(
            shape, area_range, aspect_ratio_range, crop_seed
        ),
    )
    image = tf.image.resize(
        crop, [image_size, image_size], method="bilinear", antialias=False
    )
    if color_jitter:
        image = _color_jitter(image, color_jitter, jitter_seed)
    image = tf.image.stateless_random_flip_left_right(
        to_uint8(image), flip_seed
    )
    image.set_shape([image_size, image_size, 3])
    return image


def eval_crop_window(image_shape, crop_fraction=DEFAULT_CROP_FRACTION):
    """Returns the exactly centred evaluation window of an image.

    Each side of the window is ``crop_fraction * min(h, w)`` rounded to the
    nearest integer with the same parity as that image side, so the margins
    are equal on both ends (no half-pixel bias towards a corner) and the
    height and width differ by at most one pixel.

    Reference:
        Zhang et al., ShuffleNet, section 4 (224x224 centre view of a 256
        input).

    Args:
        image_shape: int32 tensor ``[height, width, ...]``.
        crop_fraction: Crop side over the shorter image side. Defaults to
            224/256.

    Returns:
        int32 tensor ``[offset_y, offset_x, height, width]``.
    """
    h, w = image_shape[0], image_shape[1]
    side = crop_fraction * tf.cast(tf.minimum(h, w), tf.float32)

    def same_parity(size):
        # Nearest integer n to `side` with (size - n) even, at least 1.
        n = 2.0 * tf.round((side - tf.cast(size % 2, tf.float32)) / 2.0)
        n = tf.cast(n, tf.int32) + size % 2
        n = tf.where(n < 1, 2 - size % 2, n)
        return tf.minimum(n, size)

    crop_h, crop_w = same_parity(h), same_parity(w)
    return tf.stack([(h - crop_h) // 2, (w - crop_w) // 2, crop_h, crop_w])


def preprocess_for_eval(
    image_bytes, image_size=224, crop_fraction=DEFAULT_CROP_FRACTION,
    resize_first=False, antialias=False,
):
    """Centre-crops and resizes one encoded evaluation image.

    Equivalent to resizing the shorter side to ``image_size /
    crop_fraction`` (256 for 224) and taking the central ``image_size``
    square, but only the central window (``eval_crop_window``) is decoded,
    then resized bilinearly. ``resize_first`` does it literally, as
    torchvision's ``Resize`` + ``CenterCrop`` and OpenCV pipelines do, to
    measure pretrained weights the way their source did.

    Reference:
        Zhang et al., ShuffleNet, section 4 (224x224 centre view of a 256
        input).

    Args:
        image_bytes: Scalar string tensor, an encoded JPEG/PNG/GIF/BMP.
        image_size: Output side. Defaults to 224.
        crop_fraction: Crop side over the shorter image side. Defaults to
            224/256.
        resize_first: Resize the whole image's shorter side to
            ``round(image_size / crop_fraction)``, then crop the centre.
            Defaults to False.
        antialias: Filter while shrinking, as Pillow's bilinear resize
            does (OpenCV's ``INTER_LINEAR`` and the default do not).
            Defaults to False.

    Returns:
        uint8 tensor ``[image_size, image_size, 3]`` in [0, 255].
    """
    if resize_first:
        image = _resize_then_crop(
            image_bytes, image_size, crop_fraction, antialias
        )
    else:
        crop, _ = _decode_window(
            image_bytes, lambda shape: eval_crop_window(shape, crop_fraction)
        )
        image = tf.image.resize(
            crop, [image_size, image_size], method="bilinear",
            antialias=antialias,
        )
    image = to_uint8(image)
    image.set_shape([image_size, image_size, 3])
    return image


def _resize_then_crop(image_bytes, image_size, crop_fraction, antialias):
    image, shape = _decode_window(
        image_bytes, lambda shape: tf.stack([0, 0, shape[0], shape[1]])
    )
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    shorter = tf.round(image_size / crop_fraction)
    scale = shorter / tf.minimum(h, w)
    size = tf.cast(tf.round(tf.stack([h * scale, w * scale])), tf.int32)
    resized = tf.image.resize(
        image, size, method="bilinear", antialias=antialias
    )
    offsets = tf.cast(
        tf.round(tf.cast(size - image_size, tf.float32) / 2.0), tf.int32
    )
    return tf.slice(
        resized, tf.stack([offsets[0], offsets[1], 0]),
        [image_size, image_size, 3],
    )
