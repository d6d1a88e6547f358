"""Shared pytest set-up: quiet TensorFlow and two logical CPU devices.

The logical devices must exist before TensorFlow initialises its devices,
so they are configured here, at import time, for every test module; tests
of `tf.distribute.MirroredStrategy` use them.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )
except RuntimeError:  # Devices were initialised already.
    pass


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One MirroredStrategy over the two logical CPUs per test process.

    Two MirroredStrategy objects over the same devices in one process can
    hand out clashing collective instance keys, so every test shares this.
    """
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2
    return tf.distribute.MirroredStrategy(devices)
