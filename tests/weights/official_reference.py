"""A PyTorch ShuffleNet v1 with the official release's layout and tensor
names, written here from the paper, to test the checkpoint converter.

It follows the layout of megvii-model/ShuffleNet-Series (ShuffleNetV1):
BGR input in [0, 255], the release's widths, its shuffle (reshape to
(n, g)) after the depthwise BN, a bias-free classifier and the module
names `first_conv`, `features.{i}.branch_main_{1,2}` and `classifier`.

Reference:
    Zhang et al., "ShuffleNet", section 3 and Table 1.
"""

import torch
from torch import nn
from torch.nn import functional as F

# [conv1, stage2, stage3, stage4] of the release, per (scale, groups).
RELEASE_WIDTHS = {
    (0.5, 3): (12, 120, 240, 480),
    (1.0, 3): (24, 240, 480, 960),
    (1.5, 3): (24, 360, 720, 1440),
    (2.0, 3): (48, 480, 960, 1920),
    (0.5, 8): (16, 192, 384, 768),
    (1.0, 8): (24, 384, 768, 1536),
    (1.5, 8): (24, 576, 1152, 2304),
    (2.0, 8): (48, 768, 1536, 3072),
}
UNITS_PER_STAGE = (4, 8, 4)


def release_shuffle(x, groups):
    """The release's channel shuffle: channels viewed as (n, g), transposed."""
    batch, channels, height, width = x.shape
    x = x.view(batch, channels // groups, groups, height, width)
    return x.transpose(1, 2).reshape(batch, channels, height, width)


class ReferenceUnit(nn.Module):
    """Figure 2 (b)/(c), with the release's module indices and order."""

    def __init__(self, in_channels, out_channels, groups, stride, first):
        super().__init__()
        self.groups = groups
        self.stride = stride
        mid = out_channels // 4
        branch = out_channels - in_channels if stride == 2 else out_channels
        # Indices 0, 1, 3, 4 hold tensors; the ReLU at 2 holds none.
        self.branch_main_1 = nn.Sequential(
            nn.Conv2d(
                in_channels, mid, 1, groups=1 if first else groups,
                bias=False,
            ),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
        )
        self.branch_main_2 = nn.Sequential(
            nn.Conv2d(mid, branch, 1, groups=groups, bias=False),
            nn.BatchNorm2d(branch),
        )

    def forward(self, x):
        y = self.branch_main_1(x)
        if self.groups > 1:
            y = release_shuffle(y, self.groups)
        y = self.branch_main_2(y)
        if self.stride == 1:
            return F.relu(x + y)
        # AvgPool2d counts the zero padding (count_include_pad=True).
        shortcut = F.avg_pool2d(x, 3, 2, 1)
        return torch.cat([shortcut, F.relu(y)], 1)


class ReferenceShuffleNetV1(nn.Module):
    """The official architecture for one of the release's configurations.

    Args:
        scale: 0.5, 1.0, 1.5 or 2.0.
        groups: 3 or 8.
        pool: `"avgpool7"`, the release's `AvgPool2d(7)` (global only for
            224x224 inputs), or `"global"`, a global average for any input
            size, so that tests can run on small images.
        classes: Classifier outputs. Defaults to 1000.
    """

    def __init__(self, scale, groups, pool="global", classes=1000):
        super().__init__()
        stem, *widths = RELEASE_WIDTHS[(scale, groups)]
        self.pool = pool
        self.first_conv = nn.Sequential(
            nn.Conv2d(3, stem, 3, 2, 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(),
        )
        units = []
        in_channels = stem
        for stage, (width, repeats) in enumerate(zip(widths, UNITS_PER_STAGE)):
            for unit in range(repeats):
                units.append(
                    ReferenceUnit(
                        in_channels, width, groups,
                        stride=2 if unit == 0 else 1,
                        first=stage == 0 and unit == 0,
                    )
                )
                in_channels = width
        self.features = nn.Sequential(*units)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels, classes, bias=False)
        )

    def forward(self, x):
        x = self.first_conv(x)
        x = F.max_pool2d(x, 3, 2, 1)
        x = self.features(x)
        if self.pool == "avgpool7":
            x = F.avg_pool2d(x, 7)
        else:
            x = x.mean((2, 3), keepdim=True)
        return self.classifier(x.flatten(1))
