"""Measure a cost table on this machine: per unit of `PGNet.units()`, forward, input-gradient and weight-gradient
seconds, bytes sent and saved, parameters, FLOPs and synchronised norm layers.

Computed as the stages will (`train.channels_last`, `train.precision`, `train.threads`), like
`pipelines.training.balance.measure_unit_costs`, with the backward split in two:
- input gradient: `torch.autograd.grad` of the unit's outputs with respect to its inputs only (autograd
  skips the weight gradients it does not need), timed on its own;
- weight gradient: a full backward timed next, minus the input-gradient time (clamped at 0).
Times are also taken on twice the images, and each pass's fixed part (per-call overhead) fitted
(`measure_cost_table(fit_fixed=...)`). Saved bytes: what `saved_tensors_hooks` sees the forward save, each
storage once, without parameters and without the unit's own inputs (a stage holds its input bus on its
own; the planner adds it). FLOPs:
`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products, 2 per multiply-add; norms and
activations not counted), of the forward, the input-gradient pass and the full backward.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pgnet.config import Config
from pgnet.progress import progress_bar
from pgnet.run.build import seeded_model
from pgnet.runtime import autocast, set_memory_format
from pipelines.planning.costs import CostTable, UnitCost


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """`train.threads` for the measurement (0: leave torch's default), restored afterwards."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Bytes of the distinct storages a forward saves for backward, leaving out the storages in `skip`
    (parameters and their views, the unit's inputs)."""

    def __init__(self, skip: set[int]):
        self.storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in skip:
                self.storages[storage.data_ptr()] = storage.nbytes()
            return t
        super().__init__(pack, lambda t: t)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def measure_cost_table(cfg: Config, microbatch: int, input_size: tuple[int, int] | None = None, repeats: int = 3,
                       fit_fixed: bool = True, progress: bool = True) -> CostTable:
    """The cost table of `cfg`'s network for `microbatch` images at `input_size` (default `data.input_size`).

    `fit_fixed`: also time every unit on twice the images and keep, per pass, the part that did not double
    (t(b) = fixed + b x per image: fixed = 2 t(b) - t(2b), within [0, t(b)]), the per-call overhead that makes
    small micro-batches dearer per image than linear scaling says."""
    size = tuple(input_size or cfg.data.input_size)
    model = set_memory_format(seeded_model(cfg), cfg.train.channels_last).train()
    bus: tuple[torch.Tensor, ...] = (torch.randn(microbatch, 3, *size),)
    double = (torch.randn(2 * microbatch, 3, *size),) if fit_fixed else None
    rows = []
    with torch_threads(cfg.train.threads):
        for index, unit in enumerate(progress_bar(model.units(), progress, desc="unit costs", unit="unit")):
            row, bus = _measure_unit(unit, bus, first=index == 0, precision=cfg.train.precision, repeats=repeats)
            if double is not None:
                twice, double = _unit_times(unit, double, index == 0, cfg.train.precision, repeats)
                for key, t2 in zip(("forward", "backward_input", "backward_weight"), twice):
                    t1 = row[f"{key}_s"]
                    row[f"{key}_fixed_s"] = min(max(2 * t1 - t2, 0.0), t1)
            rows.append(UnitCost(microbatch=microbatch, input_size=size, **row))
    return CostTable(tuple(rows))


def _inputs(bus: tuple[torch.Tensor, ...], first: bool) -> tuple[torch.Tensor, ...]:
    """The images need no gradient; every floating bus tensor after them does (the previous stage waits for it)."""
    return tuple(t.detach().requires_grad_(not first and t.is_floating_point()) for t in bus)


def _unit_times(unit: nn.Module, bus: tuple[torch.Tensor, ...], first: bool, precision: str, repeats: int):
    """((forward, input-gradient, weight-gradient) median seconds, the unit's output bus)."""
    device = bus[0].device
    inputs = _inputs(bus, first)
    wants_grad = [t for t in inputs if t.requires_grad]
    forward, backward_input, backward = [], [], []
    for _ in range(repeats + 1):  # the first round warms up allocations and oneDNN's kernels
        start = time.perf_counter()
        with autocast(precision, device):
            out = unit(*inputs)
        forward.append(time.perf_counter() - start)
        outs = [o for o in out if o.requires_grad]
        grads = [torch.ones_like(o) for o in outs]
        start = time.perf_counter()
        if wants_grad:
            torch.autograd.grad(outs, wants_grad, grads, retain_graph=True, allow_unused=True)
        backward_input.append(time.perf_counter() - start if wants_grad else 0.0)
        start = time.perf_counter()
        torch.autograd.backward(outs, grads)
        backward.append(time.perf_counter() - start)
        unit.module.zero_grad(set_to_none=True)
    f, i, b = (statistics.median(v[1:]) for v in (forward, backward_input, backward))
    return (f, i, max(b - i, 0.0)), tuple(t.detach() for t in out)


def _measure_unit(unit: nn.Module, bus: tuple[torch.Tensor, ...], first: bool, precision: str, repeats: int):
    device = bus[0].device
    (f, i, w), _ = _unit_times(unit, bus, first, precision, repeats)
    inputs = _inputs(bus, first)
    wants_grad = [t for t in inputs if t.requires_grad]
    skip = {t.untyped_storage().data_ptr() for t in (*inputs, *unit.module.parameters())}
    saved = SavedBytes(skip)
    flops = FlopCounterMode(display=False)
    with flops, saved, autocast(precision, device):
        out = unit(*inputs)
    forward_flops = flops.get_total_flops()
    outs = [o for o in out if o.requires_grad]
    grads = [torch.ones_like(o) for o in outs]
    with FlopCounterMode(display=False) as back_input:
        if wants_grad:
            torch.autograd.grad(outs, wants_grad, grads, retain_graph=True, allow_unused=True)
    with FlopCounterMode(display=False) as back:
        torch.autograd.backward(outs, grads)
    unit.module.zero_grad(set_to_none=True)
    norms = [m for m in unit.module.modules() if isinstance(m, nn.SyncBatchNorm)]
    row = {
        "name": unit.name, "forward_s": f, "backward_input_s": i, "backward_weight_s": w,
        "send_bytes": sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in out),
        "param_bytes": sum(p.numel() * p.element_size() for p in unit.module.parameters()),
        "saved_bytes": saved.total, "forward_flops": float(forward_flops),
        "backward_flops": float(back.get_total_flops()), "backward_input_flops": float(back_input.get_total_flops()),
        "sync_norms": len(norms), "sync_norm_bytes": sum((2 * m.num_features + 1) * 4 for m in norms)}
    return row, tuple(t.detach() for t in out)
