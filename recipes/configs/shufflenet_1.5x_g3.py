# ShuffleNet 1.5x (g=3), ImageNet. Paper Table 5: 28.5% top-1 error.
"""292 MFLOPs; the paper's ImageNet recipe (section 4)."""

from keras_shufflenet import training


def get_config():
    return training.paper_config(1.5, 3, paper_top1_error=28.5)
