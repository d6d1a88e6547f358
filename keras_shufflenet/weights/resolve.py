"""`ShuffleNet(weights=...)` for all but Keras files: `"imagenet"`, an
entry's name, or a checkpoint file of a known source. `keras_shufflenet.
weights` registers `resolve_weights` with `models.pretrained` on import.

A named entry is downloaded (`download.fetch`), converted once into Keras
weights in the cache, and loaded from there afterwards, offline. A
checkpoint file is read (without running code from it), recognised from
its tensor names and ported straight into the model.
"""

import os
import types
import zipfile

import keras

from keras_shufflenet.models.loading import load_weights
from keras_shufflenet.models.pretrained import WeightsPlan
from keras_shufflenet.models.pretrained import register_resolver
from keras_shufflenet.models.shufflenet import ShuffleNet
from keras_shufflenet.utils.files import atomic_path
from keras_shufflenet.weights import download
from keras_shufflenet.weights.registry import IMAGENET_CLASSES
from keras_shufflenet.weights.registry import IMAGENET_INPUT_SIZE
from keras_shufflenet.weights.registry import find_entry
from keras_shufflenet.weights.sources import SOURCES
from keras_shufflenet.weights.sources import port
from keras_shufflenet.weights.sources import recognise
from keras_shufflenet.weights.sources import state_dict
from keras_shufflenet.weights.torch_reader import read_torch_checkpoint

# What a checkpoint of another implementation is called, as shipped.
CHECKPOINT_SUFFIXES = (".pth", ".pth.tar", ".pt", ".pth.zip", ".tar", ".zip")


def read_checkpoint(path):
    """Reads a checkpoint file of a known source, safely.

    Args:
        path: A `.pth`, `.pth.tar`, `.pt` or `.pth.zip` file of the
            official release, mmpretrain or pytorchcv. tensorpack's `.npz`
            is refused: its network pads as TensorFlow's "SAME" does.

    Returns:
        `(source, tensors)`: the `sources.CheckpointSource` recognised from
        the tensor names, and `{name: array}` with its prefixes stripped.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not a checkpoint, a NumPy archive, an unknown source,
            or a pickle that asks for code
            (`torch_reader.UnsafeCheckpointError`); the message names the
            file.
    """
    path = os.fspath(path)
    _refuse_numpy_archive(path)
    tensors = state_dict(read_torch_checkpoint(path), path)
    return recognise(tensors, path)


def _refuse_numpy_archive(path):
    """tensorpack ships `.npz`; say why it is refused, not "corrupted"."""
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
    if names and all(n.endswith(".npy") for n in names):
        raise ValueError(
            f"{path} is a NumPy archive (.npz), tensorpack's format, which "
            "is not read: tensorpack's ShuffleNet pads its stem, pools and "
            'stride-2 depthwise convs as TensorFlow\'s "SAME" does, one '
            "pixel off from the PyTorch networks this model reproduces. "
            f"Supported: checkpoints of {', '.join(SOURCES)} as they "
            "ship, and this package's .keras and .weights.h5 files."
        )


def converted_path(entry):
    """Where `entry`'s converted Keras weights live in the cache."""
    return os.path.join(download.weights_home(), f"{entry.name}.weights.h5")


def architecture(source, scale):
    """The `ShuffleNet` arguments of a source's network at `scale`."""
    return types.MappingProxyType(source.architecture(scale))


def entry_model(entry):
    """The 1000-class classifier an entry's checkpoint holds."""
    return ShuffleNet(
        entry.scale, entry.groups, classifier_activation=None,
        name=entry.name.replace(".", "_"),
        **architecture(SOURCES[entry.source], entry.scale),
    )


def convert_entry(entry, progress=True):
    """The path of `entry`'s Keras weights, converted on first use.

    Downloads (or finds) the checkpoint, checks its hash, ports it into
    `entry_model(entry)` and saves the weights into the cache atomically;
    after that, loads need neither the network nor the checkpoint.
    """
    path = converted_path(entry)
    if os.path.isfile(path):
        return path
    checkpoint = download.fetch(entry, progress=progress)
    source, tensors = read_checkpoint(checkpoint)
    if source.name != entry.source:
        raise ValueError(
            f"{checkpoint} holds a {source.name} checkpoint, but "
            f"{entry.name!r} is one of {entry.source}."
        )
    # Built outside any distribution strategy and in float32, whatever
    # the caller's; the weights file is the same.
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        model = entry_model(entry)
    finally:
        keras.config.set_dtype_policy(policy)
    port(model, tensors, source, what=checkpoint)
    with atomic_path(path) as tmp:
        model.save_weights(tmp)
    if progress:
        print(f"Converted {checkpoint} into {path}", flush=True)
    return path


def _entry_plan(entry):
    return WeightsPlan(
        name=entry.name,
        architecture=architecture(SOURCES[entry.source], entry.scale),
        classes=IMAGENET_CLASSES,
        input_size=IMAGENET_INPUT_SIZE,
        load=lambda model: load_weights(model, convert_entry(entry)),
    )


def _checkpoint_plan(path, scale):
    source, tensors = read_checkpoint(path)
    classifier = tensors.get(f"{source.head['predictions']}.weight")
    return WeightsPlan(
        name=path,
        architecture=architecture(source, scale),
        classes=None if classifier is None else int(classifier.shape[0]),
        input_size=None,
        load=lambda model: port(model, tensors, source, what=path),
    )


def resolve_weights(weights, scale, groups):
    """`models.pretrained`'s resolver: a name or a checkpoint file.

    Returns:
        A `models.pretrained.WeightsPlan`.

    Raises:
        FileNotFoundError: A checkpoint path that does not exist.
        ValueError: An unknown name, or a file no source recognises.
    """
    if os.path.isfile(weights):
        return _checkpoint_plan(weights, scale)
    if weights.endswith(CHECKPOINT_SUFFIXES) or os.sep in weights:
        raise FileNotFoundError(
            f"`weights` names a file that does not exist: {weights!r}"
        )
    return _entry_plan(find_entry(weights, scale, groups))


register_resolver(resolve_weights)
