"""The ResNet backbone of PGNet: torchvision's ResNet cut into the paper's stages C1..C5.

The stem (conv1, bn1, relu, maxpool) is C1/C2's entry, `layer1..layer4` give
C2..C5. The norm layer is swappable; weights load from a local file only. With
`small_map_matmul`, convolutions on the smallest maps run as matrix products on
the CPU (`pgnet.models.small_map_conv`).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

from pgnet.errors import CheckpointError, MissingFileError
from pgnet.models.small_map_conv import convert_small_map_convs
from pgnet.registry import BACKBONES
from pgnet.torch_files import read_torch_file

log = logging.getLogger("pgnet.models")

# `model.backbone`: a torchvision ResNet constructor, `fn(weights=None, norm_layer=...)`.
for _name in ("resnet18", "resnet34", "resnet50", "resnet101"):
    BACKBONES.register(_name, getattr(torchvision.models, _name))


class ResNetBackbone(nn.Module):
    """C1..C5 of a torchvision ResNet; `channels` gives the widths of C3, C4, C5, `c2_channels` that of C2.
    `small_map_matmul`: its convolutions are SmallMapConv2d (same parameters and state-dict keys)."""

    def __init__(self, name: str, norm_layer: Callable[[int], nn.Module], small_map_matmul: bool = False):
        super().__init__()
        self.name = name
        resnet = BACKBONES.get(name)(weights=None, norm_layer=norm_layer)
        if small_map_matmul:
            convert_small_map_convs(resnet)
        self.stem = nn.Sequential(OrderedDict(
            conv1=resnet.conv1, bn1=resnet.bn1, relu=resnet.relu, maxpool=resnet.maxpool))
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4
        width = resnet.fc.in_features // 512  # 4 for bottleneck ResNets (50, 101), 1 for basic blocks
        self.channels = (128 * width, 256 * width, 512 * width)
        self.c2_channels = 64 * width

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
        raise MissingFileError(
            f"pretrained weights '{file}' not found; download torchvision's ResNet weights on a machine "
            "with internet access and copy the .pth file here, or set model.pretrained: null")
    state = read_torch_file(file, what="torchvision ResNet weights (a .pth state dict)")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"'{file}' holds no state dict of tensors; pass torchvision ResNet weights "
                         "(torch.save(resnet.state_dict(), path)) or a checkpoint written by `pgnet train`")
    state = torchvision_to_backbone_keys(state)
    _check_weights_fit(backbone, state, file)
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        log.info("pretrained %s: %d norm tensors not loaded (norm differs), %d unused keys",
                 file.name, len(missing), len(unexpected))


def resnet_name_of(state: dict[str, torch.Tensor]) -> str | None:
    """Which registered backbone a (backbone-keyed) state dict comes from, or None: the one whose
    convolutions have exactly these names and shapes (each candidate built on the meta device)."""
    convs = {k: tuple(v.shape) for k, v in state.items() if v.ndim == 4}
    for name in BACKBONES.names():
        with torch.device("meta"):
            own = torchvision_to_backbone_keys(BACKBONES.get(name)(weights=None).state_dict())
        if convs == {k: tuple(v.shape) for k, v in own.items() if v.ndim == 4}:
            return name
    return None


def _check_weights_fit(backbone: ResNetBackbone, state: dict[str, torch.Tensor], file: Path) -> None:
    """Every conv of the backbone, and no other conv, with the same shapes: else the depth differs."""
    own = backbone.state_dict()
    missing = [k for k, v in own.items() if v.ndim == 4 and k not in state]
    extra = [k for k, v in state.items() if v.ndim == 4 and k not in own]
    reshaped = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if not (missing or extra or reshaped):
        return
    problems = [f"{label} {keys[:3]}{' ...' if len(keys) > 3 else ''}" for label, keys in
                (("missing", missing), ("unexpected", extra), ("other shapes for", reshaped)) if keys]
    found = resnet_name_of(state)
    holds = f"the file holds {found} weights" if found else "the file is not a torchvision ResNet"
    raise CheckpointError(f"'{file}' does not fit model.backbone={backbone.name}: {holds} ({'; '.join(problems)}). "
                          f"Set model.backbone to the weights' depth or pass {backbone.name} weights.")
