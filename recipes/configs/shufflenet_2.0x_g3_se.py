# ShuffleNet 2x (g=3) with SE, ImageNet. Paper Table 5: 24.7% top-1 error.
"""527 MFLOPs; the paper's ImageNet recipe (section 4)."""

from keras_shufflenet import training


def get_config():
    return training.paper_config(2.0, 3, se=True, paper_top1_error=24.7)
