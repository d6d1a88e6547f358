"""Atomic file writes for every output the library makes (configs,
reports, models, tables), on local disks and on GCS alike.
"""

import contextlib
import os
import shutil
import tempfile

import tensorflow as tf


def write_atomic(path, content):
    """Writes text or bytes to a temporary file beside `path`, then renames.

    A reader never sees a half-written file, and an interrupted write
    leaves the previous file in place. `tf.io.gfile` makes it work for
    `gs://` paths too (a TPU run's model directory).

    Args:
        path: Destination path.
        content: `str` or `bytes`.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        tf.io.gfile.makedirs(directory)
    tmp = f"{path}.tmp-{os.getpid()}"
    mode = "wb" if isinstance(content, (bytes, bytearray)) else "w"
    try:
        with tf.io.gfile.GFile(tmp, mode) as f:
            f.write(content)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary local path that replaces `path` on success.

    Remote paths (`gs://...`) are yielded as they are: Keras and TF write
    there directly, and object stores publish each object atomically.
    """
    if "://" in path:
        yield path
        return
    parent = os.path.dirname(os.path.abspath(path))
    tmp_dir = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    tmp = os.path.join(tmp_dir, os.path.basename(path))
    try:
        yield tmp
        if os.path.isdir(path) and not os.path.islink(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
