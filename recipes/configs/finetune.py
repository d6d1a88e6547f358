# Fine-tuning ShuffleNet 1x (g=3) from ImageNet weights on your own images
# (class folders). Not a paper result. Phase 1 of Keras' transfer-learning
# guide: the backbone frozen, a new classifier trained; phase 2 (README,
# "Your own images") unfreezes everything at a tenth of the rate.
"""Fine-tuning recipe: `--data.train_path=... --data.eval_path=...`."""

from keras_shufflenet import data
from keras_shufflenet import training


def get_config():
    return training.ExperimentConfig(
        description="Fine-tune from ImageNet weights on class folders.",
        model=training.ModelConfig(
            scale=1.0,
            groups=3,
            # The most accurate published checkpoint (mmpretrain, 68.1%).
            weights="imagenet",
            # The whole backbone: with few images per class, only the new
            # classifier trains, on features ImageNet taught.
            freeze="stage4",
        ),
        optimizer=training.OptimizerConfig(
            # 0.1 at batch 64: a linear classifier on fixed features takes
            # a rate far above the paper's 0.5 per 1024 for a whole network.
            lr=1.6,
            reference_batch_size=1024,
            # A fresh classifier's first gradients are the largest.
            warmup_epochs=1.0,
            # A quarter of the paper's: a short run on few images needs
            # less, and decay pulls pretrained kernels towards zero.
            weight_decay=1e-5,
            # As in pretraining: it keeps a head trained on few images
            # from growing overconfident.
            label_smoothing=0.1,
        ),
        train=training.TrainConfig(
            batch_size=64,
            # The paper's linear decay to 0, over a short run.
            epochs=10,
            eval_batch_size=64,
            # Frozen batch norms keep ImageNet's statistics; phase 2, whose
            # batch norms train, re-estimates them (--train.
            # bn_recalibration_epochs=1).
            bn_recalibration_epochs=0.0,
            checkpoint_every_steps=500,
        ),
        data=data.InputConfig(
            source="folder",
            image_size=224,
            # Milder crops than ImageNet's (8% of the image at 1x): with a
            # few images of a class, the object should stay in view.
            min_crop_area=0.35,
            # A little colour jitter (the release's 0.4 is for 1.28M
            # images).
            color_jitter=0.1,
        ),
    )
