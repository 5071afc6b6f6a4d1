"""Peak activation memory of a stage: the bytes autograd saves for backward, tracked live.

Works the same on CPU and GPU (it counts tensors, not allocator pages), which is
what lets the benchmark compare GPipe's and 1F1B's activation footprints here.
`ActivationMemoryProbe` runs the meter inside every pipeline worker (`pgnet bench pipeline`).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from pipelines.training.probes import Probe, StepView
from pipelines.training.topology import Topology


class _Saved:
    __slots__ = ("tensor", "meter", "nbytes")

    def __init__(self, tensor: torch.Tensor, meter: "SavedActivationMeter"):
        self.tensor, self.meter = tensor, meter
        self.nbytes = tensor.numel() * tensor.element_size()
        meter.live += self.nbytes
        meter.peak_bytes = max(meter.peak_bytes, meter.live)

    def __del__(self):
        self.meter.live -= self.nbytes


class SavedActivationMeter(torch.autograd.graph.saved_tensors_hooks):
    """`with meter:` around forward+backward; `peak_bytes` is the high-water mark of saved tensors.

    Parameters saved for backward are counted too (a constant for a stage); a tensor
    saved by two operations counts twice. Good enough to compare schedules.
    """

    def __init__(self):
        self.live = 0
        self.peak_bytes = 0
        super().__init__(lambda t: _Saved(t, self), lambda saved: saved.tensor)


class ActivationMemoryProbe(Probe):
    """A pipeline-worker probe: each stage's peak saved activations over the epoch, in MB (replica 0)."""

    def __init__(self):
        self.meter: SavedActivationMeter | None = None

    def start(self, run_dir, topo: Topology) -> None:
        self.meter = SavedActivationMeter()

    def around_step(self, view: StepView):
        return self.meter

    def epoch_metrics(self, topo: Topology) -> dict[str, float]:
        values = torch.zeros(topo.stages, dtype=torch.float64)
        if topo.replica == 0:
            values[topo.stage] = self.meter.peak_bytes / 2**20
        dist.all_reduce(values)
        return {f"memory/peak_activation_mb/stage{s}": float(values[s]) for s in range(topo.stages)}
