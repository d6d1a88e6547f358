# ShuffleNet 0.5x (g=3) on scikit-learn's handwritten digits, 48x48 inputs.
# Not a paper result: ~3.7 min on 2 busy CPU cores, 98.3-99.2% top-1.
"""Quickstart: the paper's recipe scaled down to 1,797 bundled 8x8 digits."""

from keras_shufflenet import data
from keras_shufflenet import training


def get_config():
    return training.ExperimentConfig(
        description="Quickstart on scikit-learn digits (no download).",
        model=training.ModelConfig(scale=0.5, groups=3),
        optimizer=training.OptimizerConfig(
            # 0.0625 at batch 32: the paper's 0.5 per 1024 (0.016 here) is
            # too slow for 30 epochs, twice this (0.125) ended 1-3 points
            # lower. Two epochs of warm-up keep the first steps of a freshly
            # initialised net from diverging.
            lr=2.0,
            reference_batch_size=1024,
            warmup_epochs=2.0,
        ),
        train=training.TrainConfig(
            batch_size=32,
            epochs=30,
            eval_batch_size=120,
            bn_recalibration_epochs=1.0,
            checkpoint_every_steps=1000,
            log_every_steps=44,
        ),
        # 48x48 keeps a 2x2 map in stage 4; 32x32 reached only 95-96%.
        data=data.InputConfig(source="digits", image_size=48),
    )
