"""Probes: observers that a test or a benchmark hands to every pipeline worker (`WorkerPlan.probes`).

The worker calls each probe around every step and once per epoch, in the same order on every
rank, so a probe may use collectives in `epoch_metrics`. Probes hold no switch of the training
loop: a run without probes trains exactly as one with them.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch

from pipelines.training.topology import Topology


@dataclass
class StepView:
    """What one rank sees of one step: its stage's inputs (images on the first stage, packed targets on
    the last, image ids on both; None elsewhere)."""

    step: int
    topo: Topology
    images: torch.Tensor | None
    packed_targets: torch.Tensor | None
    image_ids: torch.Tensor | None


class Probe:
    """Base class: every hook does nothing."""

    def start(self, run_dir, topo: Topology) -> None:
        """Called once per worker before the first step."""

    def around_step(self, view: StepView) -> ContextManager:
        """A context the worker runs the step's schedule in."""
        return contextlib.nullcontext()

    def epoch_metrics(self, topo: Topology) -> dict[str, float]:
        """Values for the epoch's report (rank 0's count); called on every rank, collectives allowed."""
        return {}

    def close(self) -> None:
        """Called once per worker after the last step."""
