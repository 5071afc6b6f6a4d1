"""Small building blocks shared by the necks, the decoder and the heads.

`ConvNormAct` registers its conv before its norm, so Cross-Iteration BN can
find the conv whose weights it compensates for.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class ConvNormAct(nn.Sequential):
    """conv -> norm -> ReLU; `groups=in_channels` makes it depthwise."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 norm_layer: Callable[[int], nn.Module], groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                              groups=groups, bias=False)
        self.norm = norm_layer(out_channels)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()


class SeparableConv(nn.Sequential):
    """The paper's "deep convolution and 1*1 convolution": depthwise 3x3 then pointwise 1x1."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer: Callable[[int], nn.Module]):
        super().__init__()
        self.depthwise = ConvNormAct(in_channels, in_channels, 3, norm_layer, groups=in_channels)
        self.pointwise = ConvNormAct(in_channels, out_channels, 1, norm_layer)


class Float32Conv2d(nn.Conv2d):
    """A conv computed in float32 even under bfloat16 autocast (`train.precision: bf16`): the heads'
    output layers, whose regressed offsets (tens of output pixels) bfloat16 would round to 1/8 pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())
