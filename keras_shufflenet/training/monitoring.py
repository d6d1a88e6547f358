"""What a run shows while it trains: TensorBoard scalars and the
training-curve plot.
"""

import io

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from keras_shufflenet.utils.files import write_atomic


def summary_scalar(tag, value, step):
    """`tf.summary.scalar` without the `tensorboard` package.

    Writes the same event, tagged for TensorBoard's scalars plugin.
    """
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name="scalars"
        ),
        data_class=summary_pb2.DATA_CLASS_SCALAR,
    )
    tf.summary.write(
        tag, tf.constant(value, tf.float32), step=step, metadata=metadata
    )


def plot_history(history, path, title=""):
    """Writes a PNG of loss, accuracy and learning rate per epoch.

    Args:
        history: `Trainer.history`: dicts with `epoch`, `train_loss`,
            `train_top1`, `learning_rate` and `eval`.
        path: Output PNG.
        title: Figure title.
    """
    # Plotting only: matplotlib costs a second to import.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [h for h in history if not h["final"]]
    x = [h["epoch"] for h in epochs]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(x, [h["train_loss"] for h in epochs], label="train")
    axes[0].plot(x, [h["eval"]["loss"] for h in epochs], label="eval")
    # Early evaluations, with BN statistics still settling, can be orders
    # of magnitude above the rest.
    axes[0].set_yscale("log")
    axes[0].set_title("Cross-entropy loss")
    axes[1].plot(
        x, [100 * (h["train_top1"] or 0) for h in epochs], label="train top-1"
    )
    axes[1].plot(
        x, [100 * h["eval"]["top1"] for h in epochs], label="eval top-1"
    )
    axes[1].plot(
        x, [100 * h["eval"]["top5"] for h in epochs], label="eval top-5"
    )
    for h in history:
        if h["final"]:
            axes[1].scatter(
                [h["epoch"]],
                [100 * h["eval"]["top1"]],
                marker="*",
                s=120,
                color="k",
                label="top-1 after BN re-estimation",
            )
    axes[1].set_title("Accuracy (%)")
    axes[2].plot(x, [h["learning_rate"] for h in epochs])
    axes[2].set_title("Learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
