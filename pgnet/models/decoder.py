"""The decoder from the neck's P3 (stride 8) to the heads' stride 4: the paper's "Deconv+1x1conv"."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pgnet.models.layers import ConvNormAct


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
