# ShuffleNet 2x (g=3), ImageNet. Paper Table 5: 26.3% top-1 error.
"""524 MFLOPs; the paper's ImageNet recipe (section 4)."""

from keras_shufflenet import training


def get_config():
    return training.paper_config(2.0, 3, paper_top1_error=26.3)
