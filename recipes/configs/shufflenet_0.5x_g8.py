# ShuffleNet 0.5x (g=8), ImageNet. Paper Table 2: 42.3% top-1 error.
"""38 MFLOPs; the paper's ImageNet recipe (section 4)."""

from keras_shufflenet import training


def get_config():
    return training.paper_config(0.5, 8, paper_top1_error=42.3)
