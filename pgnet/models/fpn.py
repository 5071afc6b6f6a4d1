"""A standard FPN over C3..C5, Table 3's baseline neck (`model.neck: fpn`; PGNET.md, "Neck").

Lin and al.'s top-down pathway: inner_l = 1x1(C_l) + up(inner_{l+1}) (nearest upsampling), P_l =
3x3(inner_l), each conv followed by the run's norm. Only the levels the network reads are output: P3
for the decoder and P4 for the guidance head (no P4 output conv without guidance, none for P5), so no
parameter goes unused. Written as five pipeline-cuttable steps.
"""
from __future__ import annotations

from pgnet.models.neck import Neck, NormLayer, OutputConv, Step, TopDown
from pgnet.registry import NECKS


@NECKS.register("fpn")
class FPN(Neck):
    def __init__(self, in_channels: tuple[int, int, int], channels: int, norm_layer: NormLayer,
                 with_p4: bool = True):
        super().__init__(with_p4)
        c3, c4, c5 = in_channels
        self.inner5 = TopDown(c5, channels, norm_layer, top=True)
        self.inner4 = TopDown(c4, channels, norm_layer, top=False)
        self.output4 = OutputConv(channels, norm_layer, keep_input=True) if with_p4 else None
        self.inner3 = TopDown(c3, channels, norm_layer, top=False)
        self.output3 = OutputConv(channels, norm_layer, keep_input=False)

    def steps(self) -> list[Step]:
        # bus: (C3, C4, C5) -> (C3, C4, I5) -> (C3, I4) [-> (C3, I4, P4)] -> (I3[, P4]) -> (P3[, P4])
        p4 = int(self.output4 is not None)
        steps = [Step("inner5", self.inner5, 0), Step("inner4", self.inner4, 0)]
        if self.output4 is not None:
            steps.append(Step("output4", self.output4, 0))
        return steps + [Step("inner3", self.inner3, p4), Step("output3", self.output3, p4)]
