"""PGNet: ResNet backbone -> neck (CFFM or FPN) -> deconv decoder -> heads, plus the P4 guidance head.

The network is also an ordered list of *units* (`PGNet.units()`), each mapping
a tuple of tensors (the bus) to the next bus, so that pipeline training can cut
it between any two consecutive units without the model knowing about it.
"""
from __future__ import annotations

import torch
from torch import nn

from pgnet.models.backbone import ResNetBackbone
from pgnet.models.decoder import Decoder
from pgnet.models.heads import (
    DETECTION_OUTPUTS,
    GUIDANCE_OUTPUTS,
    DetectionHeads,
    GuidanceHead,
    head_output,
)
from pgnet.models.neck import Neck, apply_step

Bus = tuple[torch.Tensor, ...]


class Unit(nn.Module):
    """One pipeline-cuttable piece of PGNet. `name` is the wrapped module's path in PGNet."""

    def __init__(self, name: str, module: nn.Module):
        super().__init__()
        self.name = name
        self.module = module

    def shard_state(self) -> dict[str, torch.Tensor]:
        """This unit's entries of the full model's state dict, under the full model's keys."""
        return {f"{self.name}.{k}": v for k, v in self.module.state_dict().items()}


class StemUnit(Unit):
    def forward(self, x: torch.Tensor) -> Bus:
        return (self.module(x),)


class BlockUnit(Unit):
    """A residual block on the last bus tensor; `keep_input` carries a finished level (C3, C4) along."""

    def __init__(self, name: str, module: nn.Module, keep_input: bool):
        super().__init__(name, module)
        self.keep_input = keep_input

    def forward(self, *bus: torch.Tensor) -> Bus:
        if self.keep_input:
            return (*bus, self.module(bus[-1]))
        return (*bus[:-1], self.module(bus[-1]))


class NeckUnit(Unit):
    """One step of the neck (`pgnet.models.neck`) on the bus's last tensors; C2 and the levels the neck
    has not reached yet ride along. The first step sees ([C2,] C3, C4, C5), the last leaves ([C2,] P3[, P4])."""

    def __init__(self, name: str, module: nn.Module, passes: int):
        super().__init__(name, module)
        self.passes = passes

    def forward(self, *bus: torch.Tensor) -> Bus:
        return apply_step(bus, self.module, self.passes)


class GuidanceUnit(Unit):
    """([C2,] P3, P4) -> ([C2,] P3, guidance maps at stride 16)."""

    def forward(self, *bus: torch.Tensor) -> Bus:
        *kept, p4 = bus
        return (*kept, *self.module(p4))


class DecoderUnit(Unit):
    """([C2,] P3, *guidance maps) -> (stride-4 features, *guidance maps)."""

    def forward(self, *bus: torch.Tensor) -> Bus:
        c2, (p3, *guidance) = (bus[0], bus[1:]) if self.module.lateral2 is not None else (None, bus)
        return (self.module(p3, c2), *guidance)


class HeadUnit(Unit):
    """One detection head, so that pipeline cuts can fall between heads (together they cost as much
    as a large part of the backbone). The bus is (features, *guidance maps, *earlier heads' outputs);
    the last head drops the features and returns every output, in `output_names` order."""

    def __init__(self, name: str, module: nn.Module, output: str, guidance_maps: int,
                 output_names: tuple[str, ...] | None):
        super().__init__(name, module)
        self.output = output
        self.guidance_maps = guidance_maps
        self.output_names = output_names  # set on the last head only

    def forward(self, features: torch.Tensor, *rest: torch.Tensor) -> Bus:
        guidance, earlier = rest[:self.guidance_maps], rest[self.guidance_maps:]
        out = head_output(self.output, self.module, features)
        if self.output_names is None:
            return (features, *guidance, *earlier, out)
        outputs = dict(zip(DETECTION_OUTPUTS, (*earlier, out)))
        if guidance:
            outputs.update(GuidanceHead.to_output_stride(guidance, features.shape[-2:]))
        return tuple(outputs[name] for name in self.output_names)


class PGNet(nn.Module):
    """The whole network; `forward` returns a dict of stride-4 maps (DEVELOPERS.md)."""

    def __init__(self, backbone: ResNetBackbone, neck: Neck, neck_channels: int, decoder_channels: int,
                 head_channels: int, guidance: bool, norm_layer, decoder_c2: bool = False):
        super().__init__()
        if neck.with_p4 != guidance:
            raise ValueError("the neck outputs P4 exactly when the guidance head reads it")
        self.backbone = backbone
        self.neck = neck
        self.guidance = GuidanceHead(neck_channels, norm_layer) if guidance else None
        self.decoder = Decoder(neck_channels, decoder_channels, norm_layer,
                               c2_channels=backbone.c2_channels if decoder_c2 else None)
        self.heads = DetectionHeads(decoder_channels, head_channels)
        names = tuple(DETECTION_OUTPUTS) + (tuple(GUIDANCE_OUTPUTS) if guidance else ())
        self.output_names: tuple[str, ...] = names

    @property
    def decoder_c2(self) -> bool:
        """Whether the decoder takes C2 (`model.decoder_c2`), so that C2 rides the bus to it."""
        return self.decoder.lateral2 is not None

    def units(self) -> list[Unit]:
        """The network as consecutive units; cut anywhere for pipeline stages."""
        units: list[Unit] = [StemUnit("backbone.stem", self.backbone.stem)]
        # layer3 and layer4 start from a finished level (C3, C4) that the neck needs later, layer2 from C2
        # when the decoder takes it.
        kept = ("layer2", "layer3", "layer4") if self.decoder_c2 else ("layer3", "layer4")
        for level in ("layer1", "layer2", "layer3", "layer4"):
            layer = getattr(self.backbone, level)
            for i, block in enumerate(layer):
                keep = i == 0 and level in kept
                units.append(BlockUnit(f"backbone.{level}.{i}", block, keep_input=keep))
        units += [NeckUnit(f"neck.{step.name}", step.module, step.passes) for step in self.neck.steps()]
        if self.guidance is not None:
            units.append(GuidanceUnit("guidance", self.guidance))
        units.append(DecoderUnit("decoder", self.decoder))
        guidance_maps = len(GUIDANCE_OUTPUTS) if self.guidance is not None else 0
        last = list(DETECTION_OUTPUTS)[-1]
        for name in DETECTION_OUTPUTS:
            units.append(HeadUnit(f"heads.heads.{name}", self.heads.heads[name], name, guidance_maps,
                                  self.output_names if name == last else None))
        return units

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        bus: Bus = (images,)
        for unit in self.units():
            bus = unit(*bus)
        return dict(zip(self.output_names, bus))
