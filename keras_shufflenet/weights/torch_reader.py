"""Reads PyTorch checkpoints without PyTorch, and without running any code
from them.

A `.pth` file is a pickle, and unpickling calls whatever the file names.
This reader unpickles with an allow-list: the containers a state dict is
made of, PyTorch's tensor-rebuilding functions (replaced by NumPy ones
here) and its storage types. Any other global the pickle asks for is
refused with an error that names the file and the global, before anything
is called. It reads the two formats `torch.save` writes: the zip archive
(PyTorch 1.6 and later) and the legacy stream, and a zip that holds one of
them (`.pth.zip`, as pytorchcv ships its files).
"""

import codecs
import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

# PyTorch's storage types and the NumPy dtypes of their elements.
STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
# The legacy stream opens with this number, then a protocol version.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafeCheckpointError(ValueError):
    """A checkpoint's pickle asks for a global outside the allow-list."""


def _itemsize(dtype):
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


class _Storage:
    """One storage's bytes, typed; read when a tensor needs them (the
    legacy format stores the bytes after the pickle)."""

    def __init__(self, dtype, read=None):
        self.dtype = dtype
        self.read = read
        self._array = None

    def array(self):
        if self._array is None:
            data = self.read()
            if self.dtype == "bfloat16":
                # bfloat16 is the upper half of a float32.
                bits = np.frombuffer(data, "<u2").astype("<u4") << 16
                self._array = bits.view("<f4")
            else:
                self._array = np.frombuffer(
                    data, np.dtype(self.dtype).newbyteorder("<")
                )
        return self._array


class _Tensor:
    """A tensor to rebuild once every storage can be read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)

    def array(self):
        flat = self.storage.array()
        if not self.size:
            return np.array(flat[self.offset])
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size,
            strides=tuple(s * flat.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """`torch._utils._rebuild_tensor_v2`, rebuilt after the pickle."""
    del unused  # requires_grad, backward hooks, metadata.
    return _Tensor(storage, offset, size, stride)


def _materialize(value):
    """`value` with every `_Tensor` in its containers an array."""
    if isinstance(value, _Tensor):
        return value.array()
    if isinstance(value, dict):
        out = type(value)()
        for key, item in value.items():
            out[key] = _materialize(item)
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(_materialize(item) for item in value)
    return value


def _rebuild_parameter(data, *unused):
    """`torch._utils._rebuild_parameter`: a Parameter is its data."""
    del unused
    return data


def _ordered_dict(*args):
    return collections.OrderedDict(*args)


# What the pickle may name: module.name -> what it gets instead.
_ALLOWED = {
    "collections.OrderedDict": _ordered_dict,
    # How a protocol-2 pickle spells bytes: a pure function of a string.
    "_codecs.encode": codecs.encode,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch.nn.parameter.Parameter": _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, path, storages):
        super().__init__(file)
        self._path = path
        self._storages = storages

    def find_class(self, module, name):
        qualified = f"{module}.{name}"
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        if qualified in _ALLOWED:
            return _ALLOWED[qualified]
        raise UnsafeCheckpointError(
            f"{self._path} is not read: its pickle asks for the global "
            f"{qualified!r}, which a checkpoint of tensors does not need "
            "(only state dicts of tensors are read, and no code from the "
            "file runs)."
        )

    def persistent_load(self, pid):
        # ("storage", storage type, key, location, numel[, view meta]).
        if not (isinstance(pid, tuple) and len(pid) >= 3
                and pid[0] == "storage"):
            raise UnsafeCheckpointError(
                f"{self._path} is not read: it refers to an object "
                f"{pid!r} that is not a tensor storage."
            )
        dtype, key = pid[1], str(pid[2])
        if dtype not in STORAGE_DTYPES.values():
            raise UnsafeCheckpointError(
                f"{self._path} is not read: storage type {dtype!r} of "
                f"{key!r} is not one of {sorted(STORAGE_DTYPES)}."
            )
        storage = self._storages(dtype, key)
        view = pid[5] if len(pid) > 5 else None
        if view is None:
            return storage
        # The legacy format's view of a slice of a root storage.
        _, start, count = view
        return _Storage(
            dtype, lambda: storage.read()[
                start * _itemsize(dtype):(start + count) * _itemsize(dtype)
            ],
        )


def _read_zip_archive(archive, path):
    """The object of `torch.save`'s zip format (a `data.pkl` and storages)."""
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")
               or n == "data.pkl"]
    if len(pickles) != 1:
        return None
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = f"{prefix}byteorder"
    if byteorder in archive.namelist() and (
        archive.read(byteorder).strip() != b"little"
    ):
        raise ValueError(f"{path}: big-endian checkpoints are not read.")
    storages = {}

    def storage(dtype, key):
        if key not in storages:
            member = f"{prefix}data/{key}"
            storages[key] = _Storage(
                dtype, lambda member=member: archive.read(member)
            )
        return storages[key]

    with archive.open(pickles[0]) as f:
        return _materialize(
            _Unpickler(io.BytesIO(f.read()), path, storage).load()
        )


def _read_legacy(f, path):
    """The object of `torch.save`'s legacy stream format."""
    header = _Unpickler(f, path, None)
    if header.load() != LEGACY_MAGIC:
        return None
    header.load()  # Protocol version.
    header.load()  # sys_info.
    storages = {}

    def storage(dtype, key):
        storages.setdefault(key, _Storage(dtype))
        return storages[key]

    result = _Unpickler(f, path, storage).load()
    for key in _Unpickler(f, path, None).load():
        # Each storage: its element count (int64), then its bytes.
        (count,) = struct.unpack("<q", f.read(8))
        found = storages[str(key)]
        data = f.read(count * _itemsize(found.dtype))
        if len(data) != count * _itemsize(found.dtype):
            raise EOFError(f"storage {key!r} ends early")
        found.read = lambda data=data: data
    return _materialize(result)


def _read_object(data, path):
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            found = _read_zip_archive(archive, path)
            if found is not None:
                return found
            # A zip holding a checkpoint (pytorchcv's .pth.zip).
            inner = [n for n in archive.namelist() if not n.endswith("/")]
            if len(inner) == 1:
                return _read_object(archive.read(inner[0]), path)
        raise ValueError(
            f"{path} is a zip archive but no PyTorch checkpoint: it holds "
            "neither a data.pkl nor a single checkpoint file."
        )
    found = _read_legacy(io.BytesIO(data), path)
    if found is None:
        raise ValueError(f"{path} is not a PyTorch checkpoint.")
    return found


def read_torch_checkpoint(path):
    """Reads a PyTorch checkpoint's object, its tensors as NumPy arrays.

    Reference:
        PyTorch's `torch.save` formats (`torch/serialization.py`): the zip
        archive and the legacy stream.

    Args:
        path: A `.pth`, `.pth.tar`, `.pt` or `.pth.zip` file.

    Returns:
        What was saved (usually a dict), with every tensor a NumPy array.

    Raises:
        FileNotFoundError: `path` does not exist.
        UnsafeCheckpointError: The pickle names a global outside the
            allow-list; the message names the file and the global.
        ValueError: The file is not a PyTorch checkpoint, or is truncated
            or corrupted; the message names it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _read_object(data, path)
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError,
            ValueError, struct.error, TypeError, IndexError) as e:
        if isinstance(e, ValueError) and str(e).startswith(path):
            raise
        raise ValueError(
            f"Could not read {path} as a PyTorch checkpoint; is it "
            f"truncated or corrupted? ({type(e).__name__}: {e})"
        ) from e
