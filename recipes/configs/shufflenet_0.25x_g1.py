# ShuffleNet 0.25x (g=1), ImageNet. Paper Table 2: 57.1% top-1 error.
"""13 MFLOPs; the paper's ImageNet recipe (section 4)."""

from keras_shufflenet import training


def get_config():
    return training.paper_config(0.25, 1, paper_top1_error=57.1)
