"""Whether TensorFlow runs its oneDNN kernels, from what they can do.

TensorFlow turns oneDNN on by itself on some x86 CPUs (those with
AVX-512 VNNI and newer) and leaves it off on others, unless
`TF_ENABLE_ONEDNN_OPTS` says otherwise. It exports no way to ask which it
chose, but only its oneDNN kernels run NCHW convolutions on a CPU, so one
1x1 convolution answers.
"""

import functools


@functools.cache
def tensorflow_runs_nchw_conv(device=None):
    """Whether TensorFlow runs an NCHW convolution on `device`.

    Always on a GPU; on a CPU only with oneDNN. Runs eagerly, also inside
    a trace, so it starts TensorFlow's runtime if nothing has yet.

    Args:
        device: A device name such as `"/CPU:0"`; None for TensorFlow's
            default placement.

    Returns:
        A bool.
    """
    import tensorflow as tf

    with tf.init_scope(), tf.device(device):
        try:
            tf.nn.conv2d(
                tf.zeros((1, 1, 1, 1)), tf.zeros((1, 1, 1, 1)), 1, "VALID",
                data_format="NCHW",
            )
        except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
            return False
    return True


def cpu_runs_onednn():
    """Whether TensorFlow runs its oneDNN kernels on the CPU."""
    return tensorflow_runs_nchw_conv("/CPU:0")
