# ShuffleNet 1x (g=8) no shuffle, ImageNet. Paper Table 3: 37.6% top-1 error.
"""140 MFLOPs; the paper's ImageNet recipe (section 4)."""

from keras_shufflenet import training


def get_config():
    return training.paper_config(1.0, 8, shuffle=False, paper_top1_error=37.6)
