"""Measure a cost table on this machine: per unit of `PGNet.units()`, forward, input-gradient and weight-gradient
seconds, the optimiser's update, bytes sent and saved, parameters, FLOPs and synchronised norm layers; the
last unit's times include the loss (the stage that holds that unit runs it), and the zero-bubble schedules'
split backward is timed on the whole network (`_split_ratios`).

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

import dataclasses
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
# what torch's zero-bubble schedules run for a stage's I and W actions (`PipelineStage.backward_maybe_with_nosync`)
from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight
from torch.utils.flop_counter import FlopCounterMode

from pgnet.codec.targets import empty_targets, output_size
from pgnet.config import Config
from pgnet.losses import PGNetLoss
from pgnet.optim import build_optimizer
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
            row["optimizer_s"] = _optimizer_seconds(cfg, unit.module, repeats)
            rows.append(UnitCost(microbatch=microbatch, input_size=size, **row))
        loss_f, loss_b = _loss_times(cfg, model.output_names, bus, repeats)
        split_input, split_weight = _split_ratios(model.units(), microbatch, size, cfg.train.precision, repeats)
    rows = [dataclasses.replace(r, split_input_s=split_input * r.backward_s, split_weight_s=split_weight * r.backward_s)
            for r in rows]
    last = rows[-1]
    rows[-1] = dataclasses.replace(last, forward_s=last.forward_s + loss_f,
                                   backward_input_s=last.backward_input_s + loss_b,
                                   split_input_s=last.split_input_s + loss_b)
    return CostTable(tuple(rows))


def _split_ratios(units: list, microbatch: int, size: tuple[int, int], precision: str, repeats: int
                  ) -> tuple[float, float]:
    """(input-gradient, weight-gradient) seconds of torch's split backward (`stage_backward_input`, then
    `stage_backward_weight`: what the zero-bubble schedules run), each over one fused backward's, on every unit
    after the first as one stage: the split needs a stage's whole graph, and each unit's rows take these shares
    of their own backward."""
    with torch.no_grad(), autocast(precision, torch.device("cpu")):
        bus = tuple(t.float() for t in units[0](torch.randn(microbatch, 3, *size)))
    params = [p for u in units[1:] for p in u.module.parameters()]

    def forward() -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        inputs = [t.detach().requires_grad_(t.is_floating_point()) for t in bus]
        out = inputs
        with autocast(precision, torch.device("cpu")):
            for unit in units[1:]:
                out = unit(*out)
        # copies: torch detaches the outputs in place, and a unit may pass an input through
        outs = [o.clone() for o in out if o.requires_grad]
        return inputs, outs, [torch.ones_like(o) for o in outs]

    fused, split_input, split_weight = [], [], []
    for _ in range(repeats + 1):
        _, outs, grads = forward()
        start = time.perf_counter()
        torch.autograd.backward(outs, grads)
        fused.append(time.perf_counter() - start)
        inputs, outs, grads = forward()
        start = time.perf_counter()
        _, groups = stage_backward_input(outs, grads, inputs, iter(params))
        split_input.append(time.perf_counter() - start)
        start = time.perf_counter()
        stage_backward_weight(iter(params), groups)
        split_weight.append(time.perf_counter() - start)
        for p in params:
            p.grad = None
    full = statistics.median(fused[1:])
    return statistics.median(split_input[1:]) / full, statistics.median(split_weight[1:]) / full


def _loss_times(cfg: Config, names: list[str], outputs: tuple[torch.Tensor, ...], repeats: int) -> tuple[float, float]:
    """Forward and backward seconds of the loss on the heads' outputs, which the stage that holds the last unit
    runs: the planner counts them in that unit. Targets without people: the dense terms are timed, the
    per-person terms (a few boxes and key points each) are not."""
    criterion = PGNetLoss(cfg.loss, guidance=cfg.model.guidance)
    b = outputs[0].shape[0]
    targets = {k: torch.from_numpy(v).expand(b, *v.shape).clone()
               for k, v in empty_targets(*output_size(tuple(cfg.data.input_size)), cfg.data.max_people).items()}
    forward, backward = [], []
    for _ in range(repeats + 1):
        heads = {name: t.detach().float().requires_grad_() for name, t in zip(names, outputs)}
        start = time.perf_counter()
        loss, _ = criterion(heads, targets)
        forward.append(time.perf_counter() - start)
        start = time.perf_counter()
        loss.backward()
        backward.append(time.perf_counter() - start)
    return statistics.median(forward[1:]), statistics.median(backward[1:])


def _optimizer_seconds(cfg: Config, module: nn.Module, repeats: int) -> float:
    """One `optim` update of the unit's parameters (gradients of ones), on copies: the model stays as it was."""
    params = [(name, nn.Parameter(p.detach().clone())) for name, p in module.named_parameters()]
    if not params:
        return 0.0
    for _, p in params:
        p.grad = torch.ones_like(p)
    optimizer = build_optimizer(cfg.optim, params)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


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
