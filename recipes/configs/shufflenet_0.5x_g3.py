# ShuffleNet 0.5x (g=3), ImageNet. Paper Table 2: 43.2% top-1 error.
"""38 MFLOPs; the paper's ImageNet recipe (section 4)."""

from keras_shufflenet import training


def get_config():
    return training.paper_config(0.5, 3, paper_top1_error=43.2)
