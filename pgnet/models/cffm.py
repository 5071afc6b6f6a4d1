"""Cascaded Fusion Feature Model (CFFM): top-down fusion of C3, C4, C5, and the decoder.

P5 = 1x1(C5); P4 = 1x1(C4) + up(P5); P3 = 1x1(C3) + up(P4); each fusion is
refined by a depthwise 3x3 + pointwise 1x1 conv. The decoder lifts P3 from
stride 8 to stride 4 with a deconv and a 1x1 conv (the paper's "Deconv+1x1conv");
with `model.decoder_c2` it also adds a 1x1 lateral of C2, the stride-4 level.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pgnet.models.layers import ConvNormAct, SeparableConv


class CFFM(nn.Module):
    """Cascaded top-down fusion over the middle three levels; returns (P3, P4)."""

    def __init__(self, in_channels: tuple[int, int, int], channels: int,
                 norm_layer: Callable[[int], nn.Module]):
        super().__init__()
        c3, c4, c5 = in_channels
        self.lateral5 = ConvNormAct(c5, channels, 1, norm_layer, act=False)
        self.lateral4 = ConvNormAct(c4, channels, 1, norm_layer, act=False)
        self.lateral3 = ConvNormAct(c3, channels, 1, norm_layer, act=False)
        self.fuse5 = SeparableConv(channels, channels, norm_layer)
        self.fuse4 = SeparableConv(channels, channels, norm_layer)
        self.fuse3 = SeparableConv(channels, channels, norm_layer)

    def forward(self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        p5 = self.fuse5(self.lateral5(c5))
        p4 = self.fuse4(self.lateral4(c4) + F.interpolate(p5, size=c4.shape[-2:], mode="nearest"))
        p3 = self.fuse3(self.lateral3(c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest"))
        return p3, p4


class Decoder(nn.Module):
    """Stride 8 -> stride 4: a 4x4 deconv (stride 2) and a 1x1 conv.

    With `c2_channels`, a 1x1 lateral of C2 (stride 4) is added to the deconv's output before the
    ReLU, as FPN adds its laterals: the heads then see stride-4 detail, which sub-cell key-point
    offsets and peak positions need (PGNET.md's decoder takes P3 alone: `c2_channels=None`).
    """

    def __init__(self, in_channels: int, channels: int, norm_layer: Callable[[int], nn.Module],
                 c2_channels: int | None = None):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, channels, 4, stride=2, padding=1, bias=False)
        self.deconv_norm = norm_layer(channels)
        self.lateral2 = ConvNormAct(c2_channels, channels, 1, norm_layer, act=False) if c2_channels else None
        self.act = nn.ReLU(inplace=True)
        self.project = ConvNormAct(channels, channels, 1, norm_layer)

    def forward(self, p3: torch.Tensor, c2: torch.Tensor | None = None) -> torch.Tensor:
        x = self.deconv_norm(self.deconv(p3))
        if self.lateral2 is not None:
            x = x + self.lateral2(c2)
        return self.project(self.act(x))
