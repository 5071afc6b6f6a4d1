"""Pipeline schedules of `torch.distributed.pipelining`, one registry entry each (`pipeline.schedule`).

An entry says how many stages each worker hosts, what it needs of the micro-batches (checked when
the config is loaded, not found as a hang), and how to build torch's schedule. This module imports
no Ray: config validation reaches it through `pgnet.registry.PIPELINE_SCHEDULES`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch.distributed.pipelining import (
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
)

from pgnet.registry import PIPELINE_SCHEDULES


@dataclass(frozen=True)
class ScheduleSpec:
    schedule_class: type
    multi_stage: bool = False  # several virtual stages per worker (`pipeline.virtual_stages`)
    # A config's problem with this schedule, worded after "pipeline.schedule=<name> ", or None.
    check: Callable[[Any], str | None] = lambda pipeline: None

    def virtual_stages(self, requested: int) -> int:
        return requested if self.multi_stage else 1


def _microbatches_at_least_stages(pipeline) -> str | None:
    if pipeline.microbatches < pipeline.stages:
        return (f"needs pipeline.microbatches >= pipeline.stages, got {pipeline.microbatches} < {pipeline.stages} "
                "(torch's Schedule1F1B); raise microbatches or use gpipe")
    return None


PIPELINE_SCHEDULES.register("gpipe", ScheduleSpec(ScheduleGPipe))
PIPELINE_SCHEDULES.register("1f1b", ScheduleSpec(Schedule1F1B, check=_microbatches_at_least_stages))
PIPELINE_SCHEDULES.register("interleaved_1f1b", ScheduleSpec(ScheduleInterleaved1F1B, multi_stage=True))


def virtual_stages(name: str, requested: int) -> int:
    """Stages per worker of schedule `name`, given `pipeline.virtual_stages`."""
    return PIPELINE_SCHEDULES.get(name).virtual_stages(requested)


def build_schedule(name: str, stages: list, microbatches: int, loss_fn: Callable | None):
    """torch's schedule over this worker's `stages`; gradients are divided by the micro-batch count."""
    spec: ScheduleSpec = PIPELINE_SCHEDULES.get(name)
    if spec.multi_stage:
        return spec.schedule_class(stages, n_microbatches=microbatches, loss_fn=loss_fn, scale_grads=True)
    (stage,) = stages
    return spec.schedule_class(stage, n_microbatches=microbatches, loss_fn=loss_fn, scale_grads=True)
