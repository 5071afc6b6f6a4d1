"""Timing helpers every `pgnet bench` command shares: a median over repeated calls, and a training step.

They live apart from any one benchmark so that each measures the same way (same clock, same step).
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from pgnet.runtime import autocast


def time_call(fn: Callable[[], None], repeats: int, warmup: int = 1) -> float:
    """Median seconds per call (the median shrugs off a stray slow call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def forward_backward(model: nn.Module, images: torch.Tensor, precision: str = "fp32") -> Callable[[], None]:
    """A training step without an optimiser: forward in `precision` (`train.precision`), then backward
    through every head, so that a timing covers the whole network as training runs it."""
    def step() -> None:
        with autocast(precision, images.device):
            outputs = model(images)
        loss = sum(v.float().mean() for v in outputs.values())
        model.zero_grad(set_to_none=True)
        loss.backward()
    return step
