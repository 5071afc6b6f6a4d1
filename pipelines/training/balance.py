"""Stage balancing: measure each unit's forward+backward time and memory, then cut evenly.

The cut minimises the slowest stage's time over contiguous partitions
(linear partitioning by dynamic programming); `pipeline.balance` overrides it.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from pgnet.errors import ConfigError
from pgnet.models import PGNet
from pgnet.runtime import autocast, set_memory_format


@dataclass
class UnitCost:
    name: str
    seconds: float  # forward + backward of one micro-batch
    activation_mb: float  # the bus this unit sends on
    param_mb: float


def measure_unit_costs(model: PGNet, input_size: tuple[int, int], microbatch: int, repeats: int = 3,
                       channels_last: bool = False, precision: str = "fp32") -> list[UnitCost]:
    """Per unit, the median forward+backward time on a random micro-batch, and its memory; computed as the
    stages will (`train.channels_last`, `train.precision`: NHWC and bfloat16 change the units' shares)."""
    model = set_memory_format(model, channels_last).train()
    bus: tuple[torch.Tensor, ...] = (torch.randn(microbatch, 3, *input_size),)
    device = bus[0].device
    costs = []
    for unit in model.units():
        inputs = tuple(t.detach().requires_grad_(True) for t in bus)
        times = []
        for _ in range(repeats + 1):  # the first call warms up allocations
            start = time.perf_counter()
            with autocast(precision, device):
                out = unit(*inputs)
            torch.autograd.backward(out, [torch.ones_like(o) for o in out])
            times.append(time.perf_counter() - start)
        unit.module.zero_grad(set_to_none=True)
        with torch.no_grad(), autocast(precision, device):
            bus = unit(*inputs)
        params = sum(p.numel() * p.element_size() for p in unit.module.parameters())
        acts = sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in bus)  # sent as float32
        costs.append(UnitCost(unit.name, sorted(times[1:])[len(times[1:]) // 2], acts / 2**20, params / 2**20))
    return costs


def partition(costs: list[float], parts: int) -> list[int]:
    """Units per part, contiguous, minimising the largest part's total cost (ties: earlier cuts)."""
    n = len(costs)
    if parts > n:
        raise ConfigError(f"cannot cut {n} units into {parts} stages; use fewer pipeline stages")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[k][i]: the smallest max-part cost for the first i units in k parts
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                cost = max(best[k - 1][j], prefix[i] - prefix[j])
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, j
    sizes, i = [], n
    for k in range(parts, 0, -1):
        j = cut[k][i]
        sizes.append(i - j)
        i = j
    return sizes[::-1]


def stage_table(costs: list[UnitCost], balance: list[int]) -> tuple[str, float]:
    """A printable per-stage cost table, and max-stage / mean-stage time (1.0 is perfect balance)."""
    lines = [f"{'stage':>5} {'units':>5} {'first unit':<22} {'last unit':<22} {'ms':>8} {'share':>6} "
             f"{'params MB':>9} {'sends MB':>8}"]
    totals, start = [], 0
    total_time = sum(c.seconds for c in costs) or 1.0
    for stage, count in enumerate(balance):
        part = costs[start:start + count]
        seconds = sum(c.seconds for c in part)
        totals.append(seconds)
        lines.append(f"{stage:>5} {count:>5} {part[0].name:<22} {part[-1].name:<22} {1000 * seconds:>8.1f} "
                     f"{seconds / total_time:>6.1%} {sum(c.param_mb for c in part):>9.1f} "
                     f"{part[-1].activation_mb:>8.2f}")
        start += count
    imbalance = max(totals) / (sum(totals) / len(totals))
    lines.append(f"max-stage / mean-stage time: {imbalance:.3f}")
    return "\n".join(lines), imbalance


def costs_to_json(costs: list[UnitCost]) -> list[dict]:
    return [asdict(c) for c in costs]
