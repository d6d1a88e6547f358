# ShuffleNet 0.5x (g=3) no shuffle, ImageNet. Paper Table 3: 45.7% top-1 error.
"""38 MFLOPs; the paper's ImageNet recipe (section 4)."""

from keras_shufflenet import training


def get_config():
    return training.paper_config(0.5, 3, shuffle=False, paper_top1_error=45.7)
