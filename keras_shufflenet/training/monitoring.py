"""What a run shows while it trains: progress on the chief's console,
TensorBoard scalars, and the training-curve plot.
"""

import os
import sys

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from keras_shufflenet.utils.plots import pyplot
from keras_shufflenet.utils.plots import write_figure


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
    plt = pyplot()

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
    write_figure(fig, path)


class RunLog:
    """The console lines and TensorBoard events of one run.

    Only the chief prints and writes; other workers get a no-op writer.

    Args:
        model_dir: The run's directory; events go to its `tensorboard/`.
        chief: Whether this worker is the chief.
        verbose: Whether to print.
    """

    def __init__(self, model_dir, chief, verbose):
        self.chief = chief
        self.verbose = verbose and chief
        self.tensorboard_dir = os.path.join(model_dir, "tensorboard")

    def say(self, text):
        """Prints one line of progress (chief, verbose only)."""
        if self.verbose:
            print(text, flush=True)

    def writer(self):
        """The summary writer to make default while training."""
        if self.chief:
            return tf.summary.create_file_writer(self.tensorboard_dir)
        return tf.summary.create_noop_writer()


class EpochProgress:
    """A progress bar per epoch, and the training loss and top-1 averaged
    between two logging points (written as TensorBoard scalars).

    Args:
        steps_per_epoch: Steps in one epoch.
        total_steps: Steps of the run.
        verbose: Whether to show the progress bar.
    """

    def __init__(self, steps_per_epoch, total_steps, verbose):
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps
        self.verbose = verbose
        # Keras redraws its bar with carriage returns, which a log file
        # keeps as one endless line; there a line per log point instead.
        self.lines = verbose and not sys.stdout.isatty()
        self._bar = None
        self._open = False
        self._window = np.zeros(3)
        self.window_loss = self.window_top1 = None

    def begin(self, step):
        """Opens the epoch's progress bar before the steps after `step`."""
        if not self._open and self.verbose:
            self._open = True
            epoch = step // self.steps_per_epoch
            epochs = -(-self.total_steps // self.steps_per_epoch)
            print(f"Epoch {epoch + 1}/{epochs}", flush=True)
            target = min(
                self.steps_per_epoch,
                self.total_steps - epoch * self.steps_per_epoch,
            )
            if not self.lines:
                self._bar = keras.utils.Progbar(
                    target, stateful_metrics=["lr"]
                )

    def update(self, step, totals, lr):
        """Adds `[summed loss, correct, examples]` of the steps up to `step`."""
        epoch = (step - 1) // self.steps_per_epoch
        self._window += totals
        if self._bar is not None:
            self._bar.update(
                step - epoch * self.steps_per_epoch,
                [
                    ("loss", totals[0] / max(totals[2], 1.0)),
                    ("top1", totals[1] / totals[2]),
                    ("lr", lr),
                ],
            )

    def log(self, step, lr):
        """Writes the window's averages as scalars and starts a new one.

        Where the console is not a terminal (a log file, a cluster job),
        each log point prints one line with the global step instead of
        the progress bar.
        """
        loss, top1 = self._window[:2] / self._window[2]
        if self.lines:
            print(
                f"Step {step}/{self.total_steps}: loss {loss:.4f}, top-1 "
                f"{top1:.2%}, learning rate {lr:.4g}",
                flush=True,
            )
        summary_scalar("train/loss", loss, step)
        summary_scalar("train/top1", top1, step)
        summary_scalar("train/learning_rate", lr, step)
        self.window_loss, self.window_top1 = loss, top1
        self._window[:] = 0

    def end_epoch(self):
        """Closes the epoch's progress bar."""
        self._bar = None
        self._open = False
