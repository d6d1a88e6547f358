# ShuffleNet 1x (g=8), ImageNet. Paper Table 2: 32.4% top-1 error.
"""140 MFLOPs; the paper's ImageNet recipe (section 4)."""

from keras_shufflenet import training


def get_config():
    return training.paper_config(1.0, 8, paper_top1_error=32.4)
