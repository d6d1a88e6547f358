"""Shared pytest set-up: quiet TensorFlow, fast XLA compiles and two
logical CPU devices.

The logical devices must exist before TensorFlow initialises its devices,
so they are configured here, at import time, for every test module; tests
of `tf.distribute.MirroredStrategy` use them.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# XLA compiles Keras' grouped convolutions on TensorFlow, the jit_compile
# fits and everything on JAX. The tests run small models a few times, so
# compiling is what costs: at XLA's lowest LLVM optimization level it takes
# about a third of the time (the suite runs 9% faster), for the same
# computation. Subprocesses inherit it.
_XLA_FLAG = "--xla_backend_optimization_level=0"
if _XLA_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), _XLA_FLAG]
    ).strip()

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )
except RuntimeError:  # Devices were initialised already.
    pass


import ipaddress  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import keras  # noqa: E402
import pytest  # noqa: E402

from keras_shufflenet.models import shufflenet  # noqa: E402
from keras_shufflenet.utils.onednn import cpu_runs_onednn  # noqa: E402


class OffMachineConnectionError(ConnectionRefusedError):
    """A test tried to reach an address other than this machine's."""


def _loopback_only(connect):
    def guarded(sock, address, *args):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:  # A name: only "localhost" is this machine.
                loopback = host == "localhost"
            if not loopback:
                raise OffMachineConnectionError(
                    f"A test tried to connect to {address!r}; tests reach "
                    "only servers they start on 127.0.0.1."
                )
        return connect(sock, address, *args)

    return guarded


# Weights download code is real; the tests serve its files on 127.0.0.1,
# and this makes sure nothing in a test process goes further.
socket.socket.connect = _loopback_only(socket.socket.connect)
socket.socket.connect_ex = _loopback_only(socket.socket.connect_ex)


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """Seeds every fixture: what it builds does not depend on test order.

    With `-n 2` a module fixture is built by whichever of a worker's tests
    needs it first, after other tests drew from the global generators.
    """
    keras.utils.set_random_seed(0)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Seeds every test body, for the same reason."""
    keras.utils.set_random_seed(0)
    yield


def pytest_pyfunc_call(pyfuncitem):
    """Runs a test marked `onednn_off` in a fresh process with oneDNN off
    when this process runs TensorFlow's oneDNN kernels.

    Such a test trains in-process with `train.deterministic`, which
    `Trainer` refuses where oneDNN is on (its sums depend on the thread;
    `training.determinism`), and oneDNN is decided when TensorFlow is
    imported. So every run of the suite checks the bit-exact result, with
    either setting.
    """
    if pyfuncitem.get_closest_marker("onednn_off") is None:
        return None
    if not cpu_runs_onednn():
        return None
    completed = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            pyfuncitem.nodeid,
        ],
        cwd=pyfuncitem.config.rootpath,
        env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    if completed.returncode != 0:
        pytest.fail(
            "With TF_ENABLE_ONEDNN_OPTS=0, in a fresh process:\n"
            + completed.stdout[-6000:],
            pytrace=False,
        )
    return True


def pytest_collection_modifyitems(items):
    """Starts the tests that share an expensive fixture (an xdist_group),
    then the `long` ones.

    One worker runs a group's tests one after another; a group or a long
    test scheduled last would leave the other worker idle at the end.
    """
    items.sort(
        key=lambda item: (
            item.get_closest_marker("xdist_group") is None,
            item.get_closest_marker("long") is None,
        )
    )


def pytest_report_header():
    """Says whether this run has NCHW convolutions (oneDNN) or not."""
    runs = shufflenet.backend_runs_channels_first_conv()
    setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset")
    return (
        f"TF_ENABLE_ONEDNN_OPTS={setting}; NCHW convolutions on this CPU: "
        f"{'yes' if runs else 'no'}"
    )


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One MirroredStrategy over the two logical CPUs per test process.

    Two MirroredStrategy objects over the same devices in one process can
    hand out clashing collective instance keys, so every test shares this.
    """
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2
    return tf.distribute.MirroredStrategy(devices)


@pytest.fixture
def restores_op_determinism():
    """Turns TensorFlow's process-wide op determinism off again after a
    test whose in-process run turned it on (`train.deterministic`). Left
    on, Keras would quietly drop `jit_compile=True` in the worker's later
    tests."""
    yield
    # TensorFlow exports no way to turn it off; its own tests use this.
    from tensorflow.python.framework import config as framework_config

    framework_config.disable_op_determinism()
