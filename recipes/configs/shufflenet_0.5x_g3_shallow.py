# ShuffleNet 0.5x (g=3) shallow, ImageNet. Paper Table 5: 42.8% top-1 error.
"""40 MFLOPs; the paper's ImageNet recipe (section 4)."""

from keras_shufflenet import training


def get_config():
    return training.paper_config(0.5, 3, shallow=True, paper_top1_error=42.8)
