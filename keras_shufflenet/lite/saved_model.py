"""From a Keras model to a batch-1 SavedModel of its deployment graph,
and the evaluation-style images that calibrate an int8 conversion.
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from keras_shufflenet.data.pipeline import InputPipeline
from keras_shufflenet.data.sources import load_digits_arrays
from keras_shufflenet.lite.rewrite import deployment_model
from keras_shufflenet.models.loading import load_model
from keras_shufflenet.models.shufflenet import ShuffleNet
from keras_shufflenet.utils.checks import check_choice

DEFAULT_NUM_CALIBRATION_IMAGES = 300
SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"


def load_or_build_model(
    model_path=None,
    weights=None,
    *,
    image_size=224,
    **shufflenet_kwargs,
):
    """Loads a `.keras` model or builds a ShuffleNet for export.

    Exactly one source is used: `model_path` (a whole `.keras` model), or
    `ShuffleNet(**shufflenet_kwargs)` built at `image_size` with the
    optional `weights` (a `.weights.h5`/`.keras` file) loaded into it.

    Reference:
        Zhang et al., ShuffleNet, section 3.3 (architecture arguments).

    Args:
        model_path: Path of a `.keras` model. Defaults to None.
        weights: Path of a weights file for the built ShuffleNet; only
            without `model_path`. Defaults to None (random weights).
        image_size: Input side of the built ShuffleNet. Defaults to 224.
        **shufflenet_kwargs: Arguments of `keras_shufflenet.ShuffleNet`
            (scale, groups, se, classes, ...).

    Returns:
        A `keras.Model`.

    Raises:
        FileNotFoundError: `model_path` or `weights` does not exist.
        ValueError: Both `model_path` and `weights`/ShuffleNet arguments
            were given, or the file is not a `.keras` model.
    """
    if model_path is not None:
        if weights is not None or shufflenet_kwargs:
            raise ValueError(
                "Give either `model_path` (a whole .keras model) or "
                "`weights`/ShuffleNet arguments, not both. Received: "
                f"model_path={model_path!r}, weights={weights!r}, "
                f"arguments={sorted(shufflenet_kwargs)}"
            )
        return load_model(model_path)
    return ShuffleNet(
        input_shape=(image_size, image_size, 3),
        weights=weights,
        **shufflenet_kwargs,
    )


def logits_model(model):
    """Returns `model` without its final softmax, so it outputs logits.

    Logits, not probabilities, are what the conversion checks compare:
    softmax saturates and hides differences.

    Args:
        model: A functional Keras model. If its last layer is an
            `Activation` (ShuffleNet's `predictions_activation`), it is
            dropped; otherwise `model` is returned unchanged.

    Returns:
        A `keras.Model` sharing `model`'s layers and weights.
    """
    last = model.layers[-1]
    if isinstance(last, keras.layers.Activation) and last.get_config()[
        "activation"
    ] not in ("linear", None):
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        logits = keras.Model(inputs, last.input, name=f"{model.name}_logits")
        # A deployment graph stays one: it is not rewritten again.
        options = getattr(model, "deployment_options", None)
        if options is not None:
            logits.deployment_options = options
        return logits
    return model


def input_size(model, image_size=None):
    """Returns the `(height, width)` a model is exported at.

    Args:
        model: A Keras model with one `(batch, height, width, 3)` input.
        image_size: Requested side or `(height, width)`. Defaults to the
            model's static input size.

    Returns:
        `(height, width)`.

    Raises:
        ValueError: No size is known, or it contradicts the model's.
    """
    shape = model.input_shape
    if isinstance(shape, list):
        raise ValueError(
            f"`model` must have one image input. Received: {len(shape)} "
            "inputs"
        )
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(
            "`model` must take (batch, height, width, 3) images. "
            f"Received: input_shape={shape}"
        )
    static = shape[1:3]
    if image_size is None:
        if None in static:
            raise ValueError(
                f"`model` has a dynamic input size {shape}; pass "
                "`image_size` to fix the exported resolution."
            )
        return tuple(static)
    size = (image_size, image_size) if np.isscalar(image_size) else tuple(
        image_size
    )
    if len(size) != 2 or min(size) < 1:
        raise ValueError(
            "`image_size` must be a positive int or (height, width). "
            f"Received: image_size={image_size!r}"
        )
    if None not in static and tuple(static) != size:
        raise ValueError(
            f"`image_size`={size} differs from the model's fixed input "
            f"size {tuple(static)}; rebuild the model with input_shape="
            f"{size + (3,)} or (None, None, 3)."
        )
    return size


def export_saved_model(model, path, image_size=None):
    """Writes the deployment graph of `model` as a batch-1 SavedModel.

    The graph is `deployment_model(model)` and one signature,
    `serving_default`, taking float32 `images` of shape
    `(1, height, width, 3)`. The static batch of 1 matters: a dynamic batch
    leaves SHAPE/STRIDED_SLICE/PACK ops in the TFLite graph, outside
    XNNPACK. (`model.export` ignores `keras.Input`'s batch size, hence the
    explicit signature.)

    Args:
        model: A functional Keras model with one image input.
        path: Directory to write.
        image_size: Input side or `(height, width)`. Defaults to the
            model's static input size.

    Returns:
        `(height, width)` of the exported input.
    """
    size = input_size(model, image_size)
    deployed = deployment_model(model)
    spec = tf.TensorSpec((1,) + size + (3,), tf.float32, name=INPUT_NAME)
    deployed.export(
        os.fspath(path),
        format="tf_saved_model",
        input_signature=[spec],
        verbose=False,
    )
    return size


def calibration_images(
    config, num_images=DEFAULT_NUM_CALIBRATION_IMAGES, split="train"
):
    """Returns centre-cropped images to calibrate int8 quantization.

    The images go through the evaluation pipeline of
    `keras_shufflenet.data` (shorter side resized to `size / crop_fraction`,
    centre crop), never the training augmentation, so activation ranges
    are measured on the inputs the deployed model sees. By default they
    come from the training data, which keeps the evaluation split
    untouched for measuring the quantized model.

    The split is read in order, so the first `num_images` should be a
    sample across classes: TFDS and TFRecord ImageNet shards are
    shuffled, but a class-folder tree lists its files class by class
    (point `train_path` at a sampled folder, or use TFDS).

    Reference:
        Zhang et al., ShuffleNet, section 4 (single centre-crop
        evaluation).

    Args:
        config: A `keras_shufflenet.data.InputConfig`.
        num_images: Number of images. Defaults to 300.
        split: "train" (the training data: `train_split`/`train_path`, or
            the digits training split) or "eval". Defaults to "train".

    Returns:
        uint8 array `[n, size, size, 3]` with `n = min(num_images, split
        size)`.
    """
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(
            "`num_images` must be a positive int. "
            f"Received: num_images={num_images!r}"
        )
    check_choice("split", split, ("train", "eval"))
    if split == "train":
        if config.source == "digits":
            (images, _), _ = load_digits_arrays(config.image_size)
            return images[:num_images]
        if config.source == "tfds":
            config = dataclasses.replace(
                config, eval_split=config.train_split,
                num_eval_examples=config.num_train_examples,
            )
        else:
            if not config.train_path:
                raise ValueError(
                    "Calibrating on training images needs `train_path` for "
                    f"source={config.source!r}; set it, or use split='eval'."
                )
            config = dataclasses.replace(
                config, eval_path=config.train_path, train_path=None,
                num_eval_examples=config.num_train_examples,
            )
    pipeline = InputPipeline(config)
    batches = []
    count = 0
    for images, _, weights in pipeline.dataset(False, 32):
        keep = weights.numpy() > 0
        batches.append(images.numpy()[keep])
        count += int(keep.sum())
        if count >= num_images:
            break
    if count == 0:
        raise ValueError(f"The {split} split holds no images to calibrate.")
    return np.concatenate(batches)[:num_images]


def saved_model_input_size(saved_model_dir):
    # The signature is in the proto; `tf.saved_model.load` would rebuild
    # every function (seconds) to read two numbers.
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    signature = saved_model.meta_graphs[0].signature_def[SIGNATURE_KEY]
    (tensor_info,) = signature.inputs.values()
    return tuple(d.size for d in tensor_info.tensor_shape.dim[1:3])

