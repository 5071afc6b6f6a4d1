"""The ResNet backbone of PGNet: torchvision's ResNet cut into the paper's stages C1..C5.

The stem (conv1, bn1, relu, maxpool) is C1/C2's entry, `layer1..layer4` give
C2..C5. The norm layer is swappable; weights load from a local file only.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

log = logging.getLogger("pgnet.models")

_RESNETS: dict[str, Callable[..., torchvision.models.ResNet]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
}


class ResNetBackbone(nn.Module):
    """C1..C5 of a torchvision ResNet; `channels` gives the widths of C3, C4, C5."""

    def __init__(self, name: str, norm_layer: Callable[[int], nn.Module]):
        super().__init__()
        if name not in _RESNETS:
            raise ValueError(f"unknown backbone '{name}'; choose one of {', '.join(_RESNETS)}")
        resnet = _RESNETS[name](weights=None, norm_layer=norm_layer)
        self.stem = nn.Sequential(OrderedDict(
            conv1=resnet.conv1, bn1=resnet.bn1, relu=resnet.relu, maxpool=resnet.maxpool))
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4
        width = 4 if name in ("resnet50", "resnet101") else 1
        self.channels = (128 * width, 256 * width, 512 * width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return c3, c4, self.layer4(c4)


def torchvision_to_backbone_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision ResNet state dict to ResNetBackbone's names (fc dropped)."""
    out = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        if key.startswith(("conv1.", "bn1.")):
            key = "stem." + key
        out[key] = value
    return out


def load_backbone_weights(backbone: ResNetBackbone, path: str | Path) -> None:
    """Load torchvision ImageNet weights saved on disk (e.g. `resnet50-0676ba61.pth`).

    Norm parameters that the chosen norm does not have (GN has no running
    statistics) are reported, not fatal; a missing conv weight is an error.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"pretrained weights '{file}' not found; download torchvision's ResNet weights on a machine "
            "with internet access and copy the .pth file here, or set model.pretrained: null")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    missing, unexpected = backbone.load_state_dict(torchvision_to_backbone_keys(state), strict=False)
    missing_convs = [k for k in missing if "conv" in k or "downsample.0" in k]
    if missing_convs:
        raise ValueError(f"'{file}' does not fit this backbone: missing {missing_convs[:5]} ...; "
                         "check model.backbone matches the weights' ResNet depth")
    if missing or unexpected:
        log.info("pretrained %s: %d norm tensors not loaded (norm differs), %d unused keys",
                 file.name, len(missing), len(unexpected))
