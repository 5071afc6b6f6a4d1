"""PGNet's prediction heads (CenterNet multi-pose style) and the P4 guidance head.

Detection heads run on the stride-4 decoder features. The guidance head is a
light head on P4 that also predicts person centres and boxes, so that the
shallow and the deep features supervise each other (PGNET.md).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pgnet.models.layers import Float32Conv2d, SeparableConv

NUM_KEYPOINTS = 17
# name -> channels; the order is the order of the model's output tuple.
DETECTION_OUTPUTS = {"hm": 1, "wh": 2, "reg": 2, "kps": 2 * NUM_KEYPOINTS,
                     "hm_hp": NUM_KEYPOINTS, "hp_offset": 2}
GUIDANCE_OUTPUTS = {"guide_hm": 1, "guide_wh": 2, "guide_reg": 2}
SIZE_OUTPUTS = ("wh",)  # raw values pass through `box_size`
HEATMAP_PRIOR = 0.1  # initial foreground probability of heatmap logits (CenterNet)
INITIAL_BOX_SIZE = 8.0  # output pixels; a sensible first guess for box width/height


def box_size(raw: torch.Tensor) -> torch.Tensor:
    """Positive box sizes from raw head outputs; clamped so exp never overflows."""
    return torch.exp(raw.clamp(-8.0, 8.0))


def _init_output(conv: nn.Conv2d, name: str) -> None:
    nn.init.normal_(conv.weight, std=0.001)
    if name in ("hm", "hm_hp", "guide_hm"):
        nn.init.constant_(conv.bias, -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))
    elif name in ("wh", "guide_wh"):
        nn.init.constant_(conv.bias, math.log(INITIAL_BOX_SIZE))
    else:
        nn.init.zeros_(conv.bias)


class Head(nn.Sequential):
    """3x3 conv + ReLU + 1x1 conv to `out_channels` (one head per output; the output conv in float32)."""

    def __init__(self, in_channels: int, channels: int, out_channels: int, name: str):
        super().__init__(nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                         Float32Conv2d(channels, out_channels, 1))
        _init_output(self[2], name)


class DetectionHeads(nn.Module):
    """Centre heatmap, box size and offset, key-point offsets, key-point heatmaps and offsets."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.heads = nn.ModuleDict({name: Head(in_channels, channels, out, name)
                                    for name, out in DETECTION_OUTPUTS.items()})

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head_output(name, head, features) for name, head in self.heads.items()}


def head_output(name: str, head: Head, features: torch.Tensor) -> torch.Tensor:
    """The output `name` of its head `head`: box sizes made positive, the other maps as they come."""
    raw = head(features)
    return box_size(raw) if name in SIZE_OUTPUTS else raw


class GuidanceHead(nn.Module):
    """Person centres and boxes from P4 (stride 16), upsampled to the output stride."""

    def __init__(self, in_channels: int, norm_layer: Callable[[int], nn.Module]):
        super().__init__()
        self.refine = SeparableConv(in_channels, in_channels, norm_layer)
        self.predict = nn.ModuleDict({name: Float32Conv2d(in_channels, out, 1)
                                      for name, out in GUIDANCE_OUTPUTS.items()})
        for name, conv in self.predict.items():
            _init_output(conv, name)

    def forward(self, p4: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.refine(p4)
        return tuple(conv(x) for conv in self.predict.values())

    @staticmethod
    def to_output_stride(raw: tuple[torch.Tensor, ...], size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Upsample the stride-16 maps to the stride-4 output; sizes scale by 4 with the map."""
        hm, wh, reg = (F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in raw)
        return {"guide_hm": hm, "guide_wh": 4.0 * box_size(wh), "guide_reg": reg}
