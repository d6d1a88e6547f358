# ShuffleNet 1x (g=3) no shuffle, ImageNet. Paper Table 3: 34.5% top-1 error.
"""140 MFLOPs; the paper's ImageNet recipe (section 4)."""

from keras_shufflenet import training


def get_config():
    return training.paper_config(1.0, 3, shuffle=False, paper_top1_error=34.5)
