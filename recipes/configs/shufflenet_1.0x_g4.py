# ShuffleNet 1x (g=4), ImageNet. Paper Table 2: 32.8% top-1 error.
"""140 MFLOPs; the paper's ImageNet recipe (section 4)."""

from keras_shufflenet import training


def get_config():
    return training.paper_config(1.0, 4, paper_top1_error=32.8)
