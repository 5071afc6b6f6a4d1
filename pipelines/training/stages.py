"""PGNet cut into pipeline stages: each stage is a run of consecutive `PGNet.units()`.

A stage's state is saved under the full model's parameter names, so a
checkpoint written with S stages loads into any other S (or one process).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pgnet.errors import ConfigError
from pgnet.models import PGNet, Unit
from pgnet.runtime import autocast


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous: gloo refuses strided receive buffers."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class StageModule(nn.Module):
    """Consecutive units; takes and returns the bus (a tuple of tensors). `precision` is
    `train.precision`: with `bf16` the units run under bfloat16 autocast, as in one process.
    `fresh_outputs` (zero-bubble schedules): the outputs are always copies, never a unit's own tensors."""

    def __init__(self, units: Sequence[Unit], precision: str = "fp32", fresh_outputs: bool = False):
        super().__init__()
        self.units = nn.ModuleList(units)
        self.precision = precision
        self.fresh_outputs = fresh_outputs

    def forward(self, *bus: torch.Tensor) -> tuple[torch.Tensor, ...]:
        bus = tuple(_ContiguousGrad.apply(t) if t.requires_grad else t for t in bus)
        with autocast(self.precision, bus[0].device):
            for unit in self.units:
                bus = unit(*bus)
        # The bus goes to another worker: contiguous float32 buffers (channels-last activations are not
        # contiguous; bfloat16 ones would not match the buffers the schedule allocates), exact for bf16.
        # A zero-bubble schedule detaches a stage's outputs in place after the input gradient, and a unit's own
        # output is often saved for the weight gradient (a ReLU's, say): there, always copies.
        return tuple(t.to(torch.float32, copy=self.fresh_outputs, memory_format=torch.contiguous_format)
                     for t in bus)

    def named_model_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters under the full model's names (`backbone.layer1.0.conv1.weight`, ...)."""
        return [(f"{u.name}.{n}", p) for u in self.units for n, p in u.module.named_parameters()]

    def model_state(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for unit in self.units:
            state.update(unit.shard_state())
        return state

    def load_model_state(self, full_state: dict[str, torch.Tensor]) -> None:
        """Load this stage's entries from a full-model state dict (missing ones are an error)."""
        for unit in self.units:
            prefix = unit.name + "."
            own = {k[len(prefix):]: v for k, v in full_state.items() if k.startswith(prefix)}
            unit.module.load_state_dict(own, strict=True)


def split_units(units: list[Unit], balance: Sequence[int]) -> list[list[Unit]]:
    """Cut `units` into len(balance) runs of balance[i] units each."""
    if sum(balance) != len(units) or any(b < 1 for b in balance):
        raise ConfigError(f"pipeline.balance={list(balance)} must be positive and sum to the model's "
                         f"{len(units)} units")
    out, start = [], 0
    for count in balance:
        out.append(units[start:start + count])
        start += count
    return out


def build_stage_modules(model: PGNet, balance: Sequence[int], pieces: list[int],
                        precision: str = "fp32", fresh_outputs: bool = False) -> list[StageModule]:
    parts = split_units(model.units(), balance)
    return [StageModule(parts[i], precision, fresh_outputs) for i in pieces]
