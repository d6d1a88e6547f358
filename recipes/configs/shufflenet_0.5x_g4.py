# ShuffleNet 0.5x (g=4), ImageNet. Paper Table 2: 41.6% top-1 error.
"""38 MFLOPs; the paper's ImageNet recipe (section 4)."""

from keras_shufflenet import training


def get_config():
    return training.paper_config(0.5, 4, paper_top1_error=41.6)
