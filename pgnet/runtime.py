"""Where and how tensors compute: the device, the precision (autocast) and the memory format of a run.

Every trainer, evaluation and benchmark takes these from here, so that `train.device`,
`train.precision` and `train.channels_last` mean the same thing everywhere.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from pgnet.errors import ConfigError


def to_device(tree: Any, device: torch.device) -> Any:
    """A tensor, or a dict of them, moved to `device`; anything else as it is."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device, non_blocking=True)
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    return tree


def resolve_device(name: str) -> torch.device:
    """`train.device`: `auto` (CUDA when visible), `cpu` or `cuda`."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def set_memory_format(module: nn.Module, channels_last: bool) -> nn.Module:
    """`module` with its weights in NHWC ("channels last") layout when asked, else as it is. Its
    convolutions then compute in NHWC whatever the input's layout (oneDNN and cuDNN run faster so),
    and their outputs are NHWC too."""
    return module.to(memory_format=torch.channels_last) if channels_last else module


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's precision (`train.precision`): `bf16` computes convolutions in bfloat16
    (AMX / AVX-512 BF16 on recent CPUs, tensor cores on GPUs); weights, optimiser state, the heads'
    output convs and the losses stay float32. Training and evaluation use the same precision."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
