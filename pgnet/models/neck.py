"""What both necks share: a top-down pyramid over (C3, C4, C5) built as a chain of pipeline-cuttable steps.

A neck maps (C3, C4, C5) to (P3, P4), or to (P3,) without the guidance head, which alone reads P4.
It is written as `steps()`: each step is a submodule that replaces `takes` tensors of the bus with its
outputs, leaving the `passes` tensors after them (finished outputs) untouched. `forward` runs the steps
in order, and `PGNet.units()` wraps each in a pipeline unit, so a stage boundary can fall between any two.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pgnet.models.layers import ConvNormAct

Bus = tuple[torch.Tensor, ...]
NormLayer = Callable[[int], nn.Module]


class Step(NamedTuple):
    name: str  # the submodule's attribute name in the neck
    module: nn.Module  # has an int attribute `takes`
    passes: int  # finished tensors after the taken ones, carried along unchanged


def apply_step(bus: Bus, module: nn.Module, passes: int) -> Bus:
    """Replace the `module.takes` tensors just before the last `passes` of `bus` with the module's outputs."""
    end = len(bus) - passes
    start = end - module.takes
    return (*bus[:start], *module(*bus[start:end]), *bus[end:])


class TopDown(nn.Module):
    """One pyramid level: lateral 1x1 of C_l, plus the level above upsampled (nearest), optionally refined.

    Takes (C_l,) at the top level, (C_l, from_above) below it; returns (level,), or (level, from_above)
    with `keep_above` (the level above is an output too).
    """

    def __init__(self, in_channels: int, channels: int, norm_layer: NormLayer, top: bool,
                 refine: nn.Module | None = None, keep_above: bool = False):
        super().__init__()
        self.lateral = ConvNormAct(in_channels, channels, 1, norm_layer, act=False)
        self.refine = refine
        self.takes = 1 if top else 2
        self.keep_above = keep_above

    def forward(self, c: torch.Tensor, above: torch.Tensor | None = None) -> Bus:
        x = self.lateral(c)
        if above is not None:
            x = x + F.interpolate(above, size=c.shape[-2:], mode="nearest")
        if self.refine is not None:
            x = self.refine(x)
        return (x, above) if self.keep_above else (x,)


class OutputConv(nn.Module):
    """A pyramid output: 3x3 conv + norm of a level (FPN's output convolution); `keep_input` keeps the level
    on the bus too (a lower level still adds it)."""

    takes = 1

    def __init__(self, channels: int, norm_layer: NormLayer, keep_input: bool):
        super().__init__()
        self.conv = ConvNormAct(channels, channels, 3, norm_layer, act=False)
        self.keep_input = keep_input

    def forward(self, x: torch.Tensor) -> Bus:
        return (x, self.conv(x)) if self.keep_input else (self.conv(x),)


class Neck(nn.Module):
    """Base of the registered necks (`model.neck`): subclasses build their levels and list them in `steps()`."""

    def __init__(self, with_p4: bool):
        super().__init__()
        self.with_p4 = with_p4

    def steps(self) -> list[Step]:
        raise NotImplementedError

    def forward(self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor) -> Bus:
        """(P3, P4), or (P3,) without P4."""
        bus: Bus = (c3, c4, c5)
        for step in self.steps():
            bus = apply_step(bus, step.module, step.passes)
        return bus
