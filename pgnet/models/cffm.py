"""Cascaded Fusion Feature Model (CFFM), the paper's neck: top-down fusion of C3, C4, C5 (`model.neck: cffm`).

P5 = R(1x1(C5)); P4 = R(1x1(C4) + up(P5)); P3 = R(1x1(C3) + up(P4)), where R, the refinement of each
fusion, is a depthwise 3x3 + pointwise 1x1 conv (the paper's "deep convolution and 1*1 convolution"). The
cascade passes each refined level down, where FPN passes the unrefined sum. Three steps, one per level.
"""
from __future__ import annotations

from pgnet.models.layers import SeparableConv
from pgnet.models.neck import Neck, NormLayer, Step, TopDown
from pgnet.registry import NECKS


@NECKS.register("cffm")
class CFFM(Neck):
    def __init__(self, in_channels: tuple[int, int, int], channels: int, norm_layer: NormLayer,
                 with_p4: bool = True):
        super().__init__(with_p4)
        c3, c4, c5 = in_channels
        self.level5 = TopDown(c5, channels, norm_layer, top=True,
                              refine=SeparableConv(channels, channels, norm_layer))
        self.level4 = TopDown(c4, channels, norm_layer, top=False,
                              refine=SeparableConv(channels, channels, norm_layer))
        self.level3 = TopDown(c3, channels, norm_layer, top=False,
                              refine=SeparableConv(channels, channels, norm_layer), keep_above=with_p4)

    def steps(self) -> list[Step]:
        # bus: (C3, C4, C5) -> (C3, C4, P5) -> (C3, P4) -> (P3[, P4])
        return [Step("level5", self.level5, 0), Step("level4", self.level4, 0), Step("level3", self.level3, 0)]
