"""Pipeline schedules by the name the YAML uses: `gpipe`, `1f1b`, `interleaved_1f1b`."""
from __future__ import annotations

from typing import Callable

from torch.distributed.pipelining import ScheduleGPipe, Schedule1F1B, ScheduleInterleaved1F1B

SCHEDULES = {
    "gpipe": ScheduleGPipe,
    "1f1b": Schedule1F1B,
    "interleaved_1f1b": ScheduleInterleaved1F1B,
}
MULTI_STAGE = {"interleaved_1f1b"}  # several virtual stages per worker


def virtual_stages(schedule: str, requested: int) -> int:
    return requested if schedule in MULTI_STAGE else 1


def build_schedule(name: str, stages: list, microbatches: int, loss_fn: Callable | None):
    if name not in SCHEDULES:
        raise ValueError(f"pipeline.schedule={name!r}: choose one of {', '.join(SCHEDULES)}")
    cls = SCHEDULES[name]
    if name in MULTI_STAGE:
        return cls(stages, n_microbatches=microbatches, loss_fn=loss_fn, scale_grads=True)
    (stage,) = stages
    return cls(stage, n_microbatches=microbatches, loss_fn=loss_fn, scale_grads=True)
