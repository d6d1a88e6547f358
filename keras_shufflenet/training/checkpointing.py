"""What a run keeps in its `model_dir`: checkpoints numbered by the global
step, the evaluation history, and the exported model, each written so that
a run killed at any moment resumes from the last complete one.
"""

import dataclasses
import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from keras_shufflenet.training.config import CONFIG_FILE
from keras_shufflenet.training.config import HISTORY_FILE
from keras_shufflenet.training.config import load_config
from keras_shufflenet.training.distribution import build_model
from keras_shufflenet.utils.files import atomic_path
from keras_shufflenet.utils.files import write_atomic


def checkpoint_paths(directory):
    """The `ckpt-N` prefixes in `directory` with an index file, by `N`."""
    numbered = []
    for path in tf.io.gfile.glob(os.path.join(directory, "ckpt-*.index")):
        prefix = path[: -len(".index")]
        number = prefix.rsplit("-", 1)[1]
        if number.isdigit():
            numbered.append((int(number), prefix))
    return [prefix for _, prefix in sorted(numbered)]


class CheckpointError(RuntimeError):
    """No checkpoint of a run's `model_dir` can be restored."""


class RunRecords:
    """What every kind of checkpoints shares: the evaluation history, the
    model a `model_dir` was started with, and restoring the newest
    checkpoint that can be restored. Subclasses list (`saved`), restore
    (`_restore`) and set aside (`_set_aside`) their checkpoints.

    Args:
        model_dir: The run's directory.
        chief: Whether this process writes `model_dir`'s history.
    """

    # What a damaged or foreign checkpoint raises when restored.
    RESTORE_ERRORS = (ValueError, AssertionError, IndexError, KeyError)

    def __init__(self, model_dir, chief):
        self.model_dir = model_dir
        self.chief = chief
        self.directory = os.path.join(model_dir, "checkpoints")
        self.history_path = os.path.join(model_dir, HISTORY_FILE)
        self.restored_optional = set()

    def latest(self):
        """The newest checkpoint's path in `model_dir`, or None."""
        saved = self.saved()
        return saved[-1] if saved else None

    def restore(self, say=print, optional=()):
        """Restores the newest usable checkpoint; returns its path or None.

        A checkpoint that cannot be restored (cut short, empty, of other
        shapes or another model) is reported by name, moved to
        `checkpoints/unusable/` and the one before it tried.

        Args:
            say: Prints one line.
            optional: Names of checkpointed objects that older checkpoints
                lack; restored when present (see `restored_optional`).

        Raises:
            CheckpointError: `model_dir` holds checkpoints but none can be
                restored.
        """
        saved = self.saved()
        self.restored_optional = set()
        for path in reversed(saved):
            try:
                self._restore(path, optional)
            except self.RESTORE_ERRORS as e:
                reason = str(e).strip().splitlines()[0][:300]
                say(
                    f"Checkpoint {path} cannot be restored "
                    f"({type(e).__name__}: {reason}); moved to "
                    f"{self._set_aside(path)}, trying the one before."
                )
                continue
            return path
        if saved:
            raise CheckpointError(
                f"None of the {len(saved)} checkpoints in {self.directory} "
                "can be restored (moved to its unusable/ folder). Start "
                "with a new `model_dir`, or move them back to retry."
            )
        return None

    def history(self, up_to_step):
        """The saved evaluation history, up to the restored step."""
        if not tf.io.gfile.exists(self.history_path):
            return []
        with tf.io.gfile.GFile(self.history_path) as f:
            return [h for h in json.load(f) if h["step"] <= up_to_step]

    def write_history(self, history):
        """Writes the history (chief only), atomically."""
        if self.chief:
            write_atomic(self.history_path, json.dumps(history, indent=1))

    def check_model(self, model_config):
        """Refuses a `model_dir` whose checkpoints are of another model."""
        path = os.path.join(self.model_dir, CONFIG_FILE)
        if not tf.io.gfile.exists(path) or self.latest() is None:
            return
        saved = load_config(path)
        # The group conv lowering and BN synchronisation keep the same
        # weights, so a run may resume with another choice of either.
        fields = ("scale", "groups", "se", "shallow", "shuffle")
        before = {f: getattr(saved.model, f) for f in fields}
        now = {f: getattr(model_config, f) for f in fields}
        if before != now:
            raise ValueError(
                f"model_dir={self.model_dir!r} holds checkpoints of "
                f"another model ({before}); this run is {now}. Use a new "
                "`model_dir`."
            )


class Checkpoints(RunRecords):
    """The TensorFlow checkpoints and the history of one run.

    Every worker saves (saving is a collective under multi-worker
    strategies); only the chief writes to `model_dir`, the others to a
    private directory that `close` removes. TF writes each checkpoint's
    files under a temporary name and renames them, so a run killed while
    saving leaves the previous checkpoints whole; one damaged anyway is
    set aside at restore and the one before it used.

    Args:
        model_dir: The run's directory.
        chief: Whether this worker writes `model_dir`.
        max_to_keep: Checkpoints kept.
        **objects: What a checkpoint holds (model, optimizer, ...).
    """

    RESTORE_ERRORS = (tf.errors.OpError, *RunRecords.RESTORE_ERRORS)

    def __init__(self, model_dir, chief, max_to_keep, **objects):
        super().__init__(model_dir, chief)
        if chief:
            self._manager_dir = self.directory
            self._remove_unfinished()
            self._rewrite_state()
        else:
            self._manager_dir = tempfile.mkdtemp(
                prefix="shufflenet_worker_ckpt_"
            )
        self.max_to_keep = max_to_keep
        self.objects = objects
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.manager = self._new_manager()

    def _new_manager(self):
        return tf.train.CheckpointManager(
            self.checkpoint, self._manager_dir, max_to_keep=self.max_to_keep
        )

    def saved(self):
        """The checkpoints in `model_dir`, oldest first, by their files.

        The index files decide, not TF's `checkpoint` state file, which a
        crash can leave stale or cut short.
        """
        return checkpoint_paths(self.directory)

    def _remove_unfinished(self):
        """Removes the temporary files of saves a kill interrupted; a
        checkpoint's files get their final names only once written."""
        pattern = os.path.join(self.directory, "ckpt-*_temp*")
        for path in tf.io.gfile.glob(pattern):
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)

    def _rewrite_state(self):
        """Makes the `checkpoint` state file list exactly `saved()`, so the
        manager keeps and rotates the checkpoints that are really there."""
        saved = self.saved()
        names = [os.path.basename(path) for path in saved]
        state = os.path.join(self.directory, "checkpoint")
        if names:
            # TF's `CheckpointState` text proto, paths relative to it; the
            # manager rotates out only checkpoints with a timestamp.
            lines = [f'model_checkpoint_path: "{names[-1]}"']
            lines += [f'all_model_checkpoint_paths: "{n}"' for n in names]
            lines += [
                "all_model_checkpoint_timestamps: "
                f"{tf.io.gfile.stat(path + '.index').mtime_nsec / 1e9}"
                for path in saved
            ]
            write_atomic(state, "\n".join(lines) + "\n")
        elif tf.io.gfile.exists(state):
            tf.io.gfile.remove(state)

    def _restore(self, path, optional):
        required = {
            k: v for k, v in self.objects.items() if k not in optional
        }
        # Partial roots: the rest of the checkpoint is expected.
        tf.train.Checkpoint(**required).restore(
            path
        ).assert_existing_objects_matched().expect_partial()
        for name in optional:
            status = tf.train.Checkpoint(**{name: self.objects[name]}).restore(
                path
            ).expect_partial()
            try:
                status.assert_existing_objects_matched()
            except AssertionError:
                continue
            self.restored_optional.add(name)

    def _set_aside(self, path):
        """Moves a checkpoint's files to `unusable/`; returns the folder."""
        if not self.chief:
            return "(left in place: not the chief)"
        folder = os.path.join(self.directory, "unusable")
        tf.io.gfile.makedirs(folder)
        for name in tf.io.gfile.glob(path + ".*"):
            tf.io.gfile.rename(
                name,
                os.path.join(folder, os.path.basename(name)),
                overwrite=True,
            )
        self._rewrite_state()
        self.manager = self._new_manager()
        return folder

    def save(self, step, history):
        """Writes checkpoint `step` (all workers) and the history (chief)."""
        path = self.manager.save(checkpoint_number=step)
        self.write_history(history)
        return path

    def close(self):
        """Removes a non-chief worker's private checkpoints."""
        if not self.chief:
            shutil.rmtree(self._manager_dir, ignore_errors=True)


def write_export(model, model_config, num_classes, image_size, model_dir):
    """Writes `<model_dir>/export/<name>.keras` and a SavedModel.

    Args:
        model: The trained model.
        model_config: Its `ModelConfig`.
        num_classes: Classifier width.
        image_size: Input side.
        model_dir: The run's directory.

    Returns:
        `(keras_path, saved_model_dir)`.
    """
    model = export_model(model, model_config, num_classes, image_size)
    export_dir = os.path.join(model_dir, "export")
    tf.io.gfile.makedirs(export_dir)
    keras_path = os.path.join(export_dir, f"{model.name}.keras")
    saved_model_path = os.path.join(export_dir, "saved_model")
    with atomic_path(keras_path) as tmp:
        model.save(tmp)
    with atomic_path(saved_model_path) as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
    return keras_path, saved_model_path


def export_model(model, model_config, num_classes, image_size):
    """Copies trained weights into a float32, softmax-output inference model.

    The training model may use mixed precision, synchronized BN and a
    logits output; the exported one is the plain `ShuffleNet`, as users
    load it.

    Args:
        model: The trained model.
        model_config: Its `ModelConfig`.
        num_classes: Classifier width.
        image_size: Input side.

    Returns:
        A new `keras.Model` built outside any distribution strategy.
    """
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        plain = dataclasses.replace(model_config, sync_batch_norm=False)
        export = build_model(plain, num_classes, image_size, logits=False)
    finally:
        keras.config.set_dtype_policy(policy)
    for layer in export.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return export
