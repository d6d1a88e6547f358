"""Atomic file writes for every output the library makes (configs,
reports, models, tables), on local disks and on GCS alike.
"""

import os

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
