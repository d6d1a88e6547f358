"""PyTorch ShuffleNet v1s with the module names and computation of
pytorchcv and mmpretrain, written here from reading their code, to test
that checkpoints saved the way those sources save them load exactly.

- `PytorchcvShuffleNet`: osmr/pytorchcv `models/shufflenet.py`. Widths
  `int(c * scale)`, stem `int(24 * scale)`; each unit shuffles after its
  first pointwise conv's ReLU (the paper's order), a stride-2 unit
  concatenates `[branch, pooled shortcut]` and then applies ReLU; the
  classifier `output` has a bias; `features.final_pool` is
  `AvgPool2d(7)`. Input: RGB / 255 normalised with ImageNet's mean/std.
- `MmpretrainClassifier`: open-mmlab/mmpretrain `ShuffleNetV1` (groups 3,
  `widen_factor`) under `backbone.`, a global average pool, and
  `LinearClsHead`'s `head.fc` with a bias. Each unit shuffles after the
  depthwise conv's BN; a stride-2 unit concatenates `[pooled shortcut,
  ReLU(branch)]`. Input: RGB in [0, 255] normalised with mean (123.675,
  116.28, 103.53) and std (58.395, 57.12, 57.375).
"""

import torch
from torch import nn
from torch.nn import functional as F

STAGE1_WIDTHS = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
UNITS = (4, 8, 4)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def paper_shuffle(x, groups):
    """Channels viewed as (g, n), transposed: the paper's shuffle."""
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width)
    return x.transpose(1, 2).reshape(batch, channels, height, width)


def normalised(images):
    """RGB [0, 255] NHWC numpy -> the sources' normalised NCHW tensor."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


class PytorchcvUnit(nn.Module):
    def __init__(self, in_channels, out_channels, groups, downsample,
                 ignore_group):
        super().__init__()
        self.downsample = downsample
        self.groups = groups
        mid = out_channels // 4
        if downsample:
            out_channels -= in_channels
        self.compress_conv1 = nn.Conv2d(
            in_channels, mid, 1, groups=1 if ignore_group else groups,
            bias=False,
        )
        self.compress_bn1 = nn.BatchNorm2d(mid)
        self.dw_conv2 = nn.Conv2d(
            mid, mid, 3, 2 if downsample else 1, 1, groups=mid, bias=False
        )
        self.dw_bn2 = nn.BatchNorm2d(mid)
        self.expand_conv3 = nn.Conv2d(
            mid, out_channels, 1, groups=groups, bias=False
        )
        self.expand_bn3 = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        identity = x
        x = F.relu(self.compress_bn1(self.compress_conv1(x)))
        x = paper_shuffle(x, self.groups)
        x = self.dw_bn2(self.dw_conv2(x))
        x = self.expand_bn3(self.expand_conv3(x))
        if self.downsample:
            identity = F.avg_pool2d(identity, 3, 2, 1)
            x = torch.cat((x, identity), dim=1)
        else:
            x = x + identity
        return F.relu(x)


class PytorchcvInitBlock(nn.Module):
    def __init__(self, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(3, out_channels, 3, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.bn(self.conv(x))), 3, 2, 1)


class PytorchcvShuffleNet(nn.Module):
    """pytorchcv's `get_shufflenet(groups, width_scale)` network."""

    def __init__(self, scale, groups, classes=1000):
        super().__init__()
        stem = int(24 * scale)
        widths = [int(STAGE1_WIDTHS[groups] * 2**i * scale) for i in range(3)]
        self.features = nn.Sequential()
        self.features.add_module("init_block", PytorchcvInitBlock(stem))
        in_channels = stem
        for i, (width, units) in enumerate(zip(widths, UNITS)):
            stage = nn.Sequential()
            for j in range(units):
                stage.add_module(f"unit{j + 1}", PytorchcvUnit(
                    in_channels, width, groups, downsample=j == 0,
                    ignore_group=i == 0 and j == 0,
                ))
                in_channels = width
            self.features.add_module(f"stage{i + 1}", stage)
        self.features.add_module("final_pool", nn.AvgPool2d(7, 1))
        self.output = nn.Linear(in_channels, classes)

    def forward(self, x):
        x = self.features(x)
        return self.output(x.view(x.size(0), -1))


class ConvModule(nn.Module):
    """mmcv's `ConvModule`: `.conv` (no bias before a norm), `.bn`."""

    def __init__(self, in_channels, out_channels, kernel, stride=1,
                 groups=1, relu=True):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel, stride, kernel // 2,
            groups=groups, bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class MmpretrainUnit(nn.Module):
    def __init__(self, in_channels, out_channels, groups, first_block,
                 combine):
        super().__init__()
        self.groups = groups
        self.combine = combine
        bottleneck = out_channels // 4
        stride = 1
        if combine == "concat":
            stride = 2
            out_channels -= in_channels
        self.g_conv_1x1_compress = ConvModule(
            in_channels, bottleneck, 1, groups=1 if first_block else groups
        )
        self.depthwise_conv3x3_bn = ConvModule(
            bottleneck, bottleneck, 3, stride, groups=bottleneck, relu=False
        )
        self.g_conv_1x1_expand = ConvModule(
            bottleneck, out_channels, 1, groups=groups, relu=False
        )

    def forward(self, x):
        out = self.depthwise_conv3x3_bn(self.g_conv_1x1_compress(x))
        if self.groups > 1:
            out = paper_shuffle(out, self.groups)
        out = self.g_conv_1x1_expand(out)
        if self.combine == "concat":
            return torch.cat((F.avg_pool2d(x, 3, 2, 1), F.relu(out)), 1)
        return F.relu(x + out)


class MmpretrainBackbone(nn.Module):
    """mmpretrain's `ShuffleNetV1(groups, widen_factor)`."""

    def __init__(self, groups=3, widen_factor=1.0):
        super().__init__()
        channels = [
            max(8, int(c * widen_factor + 4) // 8 * 8)
            for c in (STAGE1_WIDTHS[groups], 2 * STAGE1_WIDTHS[groups],
                      4 * STAGE1_WIDTHS[groups])
        ]
        in_channels = int(24 * widen_factor)
        self.conv1 = ConvModule(3, in_channels, 3, 2)
        self.layers = nn.ModuleList()
        for i, (width, units) in enumerate(zip(channels, UNITS)):
            blocks = []
            for j in range(units):
                blocks.append(MmpretrainUnit(
                    in_channels, width, groups, first_block=i == 0 and j == 0,
                    combine="concat" if j == 0 else "add",
                ))
                in_channels = width
            self.layers.append(nn.Sequential(*blocks))
        self.out_channels = in_channels

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x), 3, 2, 1)
        for layer in self.layers:
            x = layer(x)
        return x


class MmpretrainHead(nn.Module):
    def __init__(self, in_channels, classes):
        super().__init__()
        self.fc = nn.Linear(in_channels, classes)


class MmpretrainClassifier(nn.Module):
    """`ImageClassifier`: backbone, `GlobalAveragePooling`, `head.fc`."""

    def __init__(self, widen_factor=1.0, classes=1000):
        super().__init__()
        self.backbone = MmpretrainBackbone(3, widen_factor)
        self.head = MmpretrainHead(self.backbone.out_channels, classes)

    def forward(self, x):
        x = self.backbone(x).mean((2, 3))
        return self.head.fc(x)
