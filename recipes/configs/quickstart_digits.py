# ShuffleNet 0.5x (g=3) on scikit-learn's handwritten digits, 48x48 inputs.
# Not a paper result: a few-minute CPU run that reaches >= 95% top-1.
"""Quickstart: the paper's recipe scaled down to 1,797 bundled 8x8 digits."""

from keras_shufflenet import data
from keras_shufflenet import training


def get_config():
    return training.ExperimentConfig(
        description="Quickstart on scikit-learn digits (no download).",
        model=training.ModelConfig(scale=0.5, groups=3),
        optimizer=training.OptimizerConfig(
            # 0.5 at batch 1024 would be 0.03 at batch 64, too slow for a
            # 30-epoch run; the digits want a larger step.
            lr=2.0,
            reference_batch_size=1024,
        ),
        train=training.TrainConfig(
            batch_size=64,
            epochs=30,
            eval_batch_size=120,
            bn_recalibration_epochs=1.0,
            checkpoint_every_steps=1000,
            log_every_steps=22,
        ),
        data=data.InputConfig(source="digits", image_size=48),
    )
