# ShuffleNet 0.25x (g=3) no shuffle, ImageNet. Paper Table 3: 56.3% top-1 error.
"""13 MFLOPs; the paper's ImageNet recipe (section 4)."""

from keras_shufflenet import training


def get_config():
    return training.paper_config(0.25, 3, shuffle=False, paper_top1_error=56.3)
