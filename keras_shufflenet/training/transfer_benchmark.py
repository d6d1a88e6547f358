"""Does starting from pretrained weights help, on data that ships with the
package? Pretrain on the digits 0-5, then learn 6-9 from a few examples
per class: fine-tuned (frozen backbone, or the whole network) against
from scratch, at equal steps and the same recipe, over several seeds
(`recipes/bench_finetune.py`).

Every run is the training recipe on class folders of the digits, so the
fine-tunes take the path a user's do (`model.weights`, `model.freeze`, a
new classifier for the 4 new classes).
"""

import os
import statistics

import numpy as np
from PIL import Image

from keras_shufflenet.data.config import InputConfig
from keras_shufflenet.data.sources import load_digits_arrays
from keras_shufflenet.training.backends import train
from keras_shufflenet.training.config import ExperimentConfig
from keras_shufflenet.training.config import ModelConfig
from keras_shufflenet.training.config import OptimizerConfig
from keras_shufflenet.training.config import TrainConfig

# Six classes to learn features from; the other four are new, so the
# classifier cannot be reused (it has another shape) and starts fresh.
PRETRAIN_CLASSES = (0, 1, 2, 3, 4, 5)
TARGET_CLASSES = (6, 7, 8, 9)
IMAGE_SIZE = 48
# The peak learning rate of every run (per 1024 images), the scratch
# runs' and the fine-tunes' alike: only the start and the freezing differ.
LEARNING_RATE = 2.0
# The ways to learn the target classes, by the `ModelConfig` changes each
# makes; the fine-tunes start from the pretraining's export.
SETTINGS = {
    "fine-tuned, backbone frozen": dict(freeze="stage4"),
    "fine-tuned, stage 4 trains": dict(freeze="stage3"),
    "fine-tuned, whole network": dict(freeze=None),
    "from scratch": dict(freeze=None, weights=False),
}


def _write_folder(root, images, labels, classes):
    for label in classes:
        os.makedirs(os.path.join(root, str(label)), exist_ok=True)
    for k, (image, label) in enumerate(zip(images, labels)):
        if label in classes:
            Image.fromarray(image).save(
                os.path.join(root, str(label), f"{k}.png")
            )
    return root


def write_digits(directory, shots, seed):
    """Class folders: the pretraining classes (all their training images)
    and, for the target classes, `shots` training images per class (drawn
    by `seed`) and every held-out image.

    Returns:
        `{"pretrain": (train, eval), "target": (train, eval)}` folders.
    """
    (x_train, y_train), (x_eval, y_eval) = load_digits_arrays(IMAGE_SIZE)
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([
        rng.choice(np.flatnonzero(y_train == c), shots, replace=False)
        for c in TARGET_CLASSES
    ])
    folders = {}
    for name, classes, train_index in (
        ("pretrain", PRETRAIN_CLASSES, np.arange(len(y_train))),
        ("target", TARGET_CLASSES, chosen),
    ):
        root = os.path.join(directory, name)
        folders[name] = (
            _write_folder(os.path.join(root, "train"), x_train[train_index],
                          y_train[train_index], classes),
            _write_folder(os.path.join(root, "eval"), x_eval, y_eval,
                          classes),
        )
    return folders


def _run_config(model_dir, folders, steps, seed, *, batch_size=16,
                weights=None, freeze=None, bn_recalibration_epochs=0.0,
                export=False):
    train_path, eval_path = folders
    return ExperimentConfig(
        model_dir=model_dir,
        strategy="cpu",
        export=export,
        model=ModelConfig(scale=0.5, groups=3, weights=weights,
                          freeze=freeze),
        optimizer=OptimizerConfig(
            lr=LEARNING_RATE, reference_batch_size=1024, warmup_epochs=0.0,
            weight_decay=1e-5,
        ),
        train=TrainConfig(
            batch_size=batch_size, steps=steps, seed=seed,
            eval_batch_size=100, log_every_steps=max(1, steps // 4),
            checkpoint_every_steps=steps,
            bn_recalibration_epochs=bn_recalibration_epochs,
        ),
        data=InputConfig(
            source="folder", train_path=train_path, eval_path=eval_path,
            image_size=IMAGE_SIZE,
        ),
    )


def compare_transfer(directory, seeds=(0, 1, 2), shots=(3, 10), steps=150,
                     pretrain_steps=1500, verbose=False):
    """Top-1 on the target digits of each of `SETTINGS`, per seed and shots.

    Args:
        directory: Where the folders and runs go.
        seeds: Seeds of the few-shot draws and of each run. Defaults to
            (0, 1, 2).
        shots: Training images per target class, one comparison each.
            Defaults to (3, 10).
        steps: Steps of every target run (batch 16, equal for all).
            Defaults to 150.
        pretrain_steps: Steps of the pretraining on `PRETRAIN_CLASSES`
            (batch 32). Defaults to 1500.
        verbose: Print the runs' progress. Defaults to False.

    Returns:
        `(rows, pretrained_top1)`: a row per setting whose `top1` maps
        each number of shots to the top-1 of each seed, and the
        pretraining's own top-1 on its classes.
    """
    folders = write_digits(os.path.join(directory, "digits"), 1, seeds[0])
    pretraining = train(
        _run_config(
            os.path.join(directory, "pretrain"), folders["pretrain"],
            pretrain_steps, seeds[0], batch_size=32,
            bn_recalibration_epochs=1.0, export=True,
        ),
        verbose=verbose,
    )
    rows = {name: {n: [] for n in shots} for name in SETTINGS}
    for n in shots:
        for seed in seeds:
            target = write_digits(
                os.path.join(directory, f"digits_{n}shots_{seed}"), n, seed
            )["target"]
            for name, setting in SETTINGS.items():
                setting = dict(setting)
                weights = setting.pop("weights", True)
                run = f"{name}_{n}shots_{seed}"
                config = _run_config(
                    os.path.join(directory, run.replace(", ", "_")
                                 .replace(" ", "_")),
                    target, steps, seed,
                    weights=pretraining.keras_path if weights else None,
                    **setting,
                )
                rows[name][n].append(train(config, verbose=verbose)
                                     .metrics["top1"])
    return (
        [{"setting": name, "top1": values} for name, values in rows.items()],
        pretraining.metrics["top1"],
    )


def format_transfer_table(rows, steps):
    """One Markdown table: per setting and shots, the mean top-1 over the
    seeds and its range."""
    shots = list(rows[0]["top1"])
    lines = [
        f"| digits {TARGET_CLASSES[0]}-{TARGET_CLASSES[-1]}, {steps} steps "
        "| " + " | ".join(f"{n} images per class" for n in shots) + " |",
        "|---|" + "---:|" * len(shots),
    ]
    for row in rows:
        cells = []
        for n in shots:
            values = [100 * v for v in row["top1"][n]]
            cells.append(
                f"{statistics.mean(values):.1f}% "
                f"({min(values):.1f}-{max(values):.1f})"
            )
        lines.append(f"| {row['setting']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
