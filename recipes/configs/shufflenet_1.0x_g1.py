# ShuffleNet 1x (g=1), ImageNet. Paper Table 2: 33.6% top-1 error.
"""140 MFLOPs; the paper's ImageNet recipe (section 4)."""

from keras_shufflenet import training


def get_config():
    return training.paper_config(1.0, 1, paper_top1_error=33.6)
