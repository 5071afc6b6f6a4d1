"""Pipeline schedules of `torch.distributed.pipelining`, one registry entry each (`pipeline.schedule`).

An entry says how many stages each worker hosts and where (looped: worker r holds r, r + S, ...;
V shape: r and 2S-1-r), what it needs of the micro-batches, and how to build torch's schedule.
What it needs is checked when the config is loaded, not found as a hang: beside each entry's own
rule, a multi-stage schedule is built on stand-in stages and its send/receive plan simulated
(`dry_run`), so torch's own refusals and a plan that could not progress become ConfigErrors.
`csv:PATH` (schedule_csv.py) reads a schedule from a file. This module imports no Ray: config
validation reaches it through `pgnet.registry.PIPELINE_SCHEDULES`.
"""
from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.pipelining import (
    Schedule1F1B,
    ScheduleDualPipeV,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleInterleavedZeroBubble,
    ScheduleLoopedBFS,
    ScheduleZBVZeroBubble,
)
from torch.distributed.pipelining import schedules as torch_schedules

from pgnet.registry import PIPELINE_SCHEDULES


@dataclass(frozen=True)
class ScheduleSpec:
    schedule_class: type
    multi_stage: bool = False  # several virtual stages per worker (`pipeline.virtual_stages`), looped
    v_shape: bool = False  # exactly two stages per worker: r and 2S-1-r
    split_backward: bool = False  # backward split into input-gradient (I) and weight-gradient (W) actions
    # The schedule's own need of a config, worded after "pipeline.schedule=<name> ", or None.
    rule: Callable[[Any], str | None] = lambda pipeline: None

    def check(self, pipeline) -> str | None:
        """The config's problem with this schedule (stage count, `rule`, then the dry run), or None."""
        if self.v_shape and pipeline.virtual_stages != 2:
            return (f"places exactly 2 stages on each worker (a V: worker r holds stages r and 2S-1-r), got "
                    f"pipeline.virtual_stages={pipeline.virtual_stages}; set it to 2")
        if self.multi_stage and pipeline.virtual_stages < 1:
            return f"needs pipeline.virtual_stages >= 1, got {pipeline.virtual_stages}"
        problem = self.rule(pipeline)
        if problem or not (self.multi_stage or self.v_shape):
            return problem
        return dry_run(self, pipeline)

    def virtual_stages(self, requested: int) -> int:
        if self.v_shape:
            return 2
        return requested if self.multi_stage else 1

    def pieces(self, worker: int, stages: int, requested: int) -> list[int]:
        """Model pieces (torch stage indices) held by pipeline worker `worker`, in the order they run first."""
        if self.v_shape:
            return [worker, 2 * stages - 1 - worker]
        return [worker + v * stages for v in range(self.virtual_stages(requested))]

    def build(self, stages: list, microbatches: int, loss_fn: Callable | None):
        if self.multi_stage or self.v_shape:
            return self.schedule_class(stages, n_microbatches=microbatches, loss_fn=loss_fn, scale_grads=True)
        (stage,) = stages
        return self.schedule_class(stage, n_microbatches=microbatches, loss_fn=loss_fn, scale_grads=True)


class _StandIn:
    """What torch's schedule constructors read of a `PipelineStage`: enough to plan, nothing to run."""

    def __init__(self, index: int, num_stages: int, workers: int, worker: int):
        self.stage_index, self.num_stages, self.group_size, self.group_rank = index, num_stages, workers, worker
        self.submod = torch.nn.Identity()
        self.stage_index_to_group_rank: dict[int, int] = {}


def simulate(schedule, num_stages: int) -> None:
    """Run torch's simulator over the lowered plan of every worker (compute, sends, receives); ValueError
    "Schedule is not progressing" if some receive has no send before it, i.e. the real run would hang."""
    kept = {torch_schedules.F, torch_schedules.I, torch_schedules.B, torch_schedules.W, torch_schedules.SEND_F,
            torch_schedules.RECV_F, torch_schedules.SEND_B, torch_schedules.RECV_B}
    plan = {rank: [leaf for action in actions if action is not None for leaf in (action.sub_actions or (action,))
                   if leaf.computation_type in kept]
            for rank, actions in schedule.pipeline_order_with_comms.items()}
    with contextlib.redirect_stdout(io.StringIO()):  # the simulator prints the plan when it stalls
        torch_schedules._simulate_comms_compute(plan, lambda s: schedule.stage_index_to_group_rank[s], num_stages)


def dry_run(spec: ScheduleSpec, pipeline) -> str | None:
    """Build `spec`'s torch schedule for worker 0 on stand-in stages (it plans every worker) and simulate it;
    the problem in words, or None."""
    return _dry_run(spec, pipeline.stages, pipeline.virtual_stages, pipeline.microbatches)


@functools.lru_cache(maxsize=64)  # torch's zero-bubble planner takes seconds for 8 stages x 64 micro-batches
def _dry_run(spec: ScheduleSpec, stages: int, virtual: int, microbatches: int) -> str | None:
    num_stages = stages * spec.virtual_stages(virtual)
    stand_ins = [_StandIn(i, num_stages, stages, 0) for i in spec.pieces(0, stages, virtual)]
    try:
        schedule = spec.build(stand_ins, microbatches, loss_fn=lambda output, target: output)
        simulate(schedule, num_stages)
    except (ValueError, RuntimeError, AssertionError) as err:
        return (f"cannot run {stages} stages x {microbatches} micro-batches: torch's {spec.schedule_class.__name__} "
                f"says \"{str(err).splitlines()[0]}\"; change pipeline.microbatches or pipeline.stages")
    return None


def _microbatches_at_least_stages(pipeline) -> str | None:
    if pipeline.microbatches < pipeline.stages:
        return (f"needs pipeline.microbatches >= pipeline.stages, got {pipeline.microbatches} < {pipeline.stages} "
                "(torch's Schedule1F1B); raise microbatches or use gpipe")
    return None


def _rounds_rule(name: str):
    """Interleaved 1F1B / zero bubble: torch runs the micro-batches in rounds of max(1, M // S)."""
    def rule(pipeline) -> str | None:
        rounds = max(1, pipeline.microbatches // pipeline.stages)
        if pipeline.microbatches % rounds:
            return (f"needs pipeline.microbatches to be a multiple of its rounds, max(1, microbatches // stages) = "
                    f"{rounds}, got {pipeline.microbatches} (torch's {name}); a multiple of pipeline.stages works")
        return None
    return rule


def _dualpipev_rule(pipeline) -> str | None:
    if pipeline.microbatches < 2 * pipeline.stages:
        return (f"needs pipeline.microbatches >= 2 x pipeline.stages (one per model piece), got "
                f"{pipeline.microbatches} < {2 * pipeline.stages} (torch's ScheduleDualPipeV)")
    return None


PIPELINE_SCHEDULES.register("gpipe", ScheduleSpec(ScheduleGPipe))
PIPELINE_SCHEDULES.register("1f1b", ScheduleSpec(Schedule1F1B, rule=_microbatches_at_least_stages))
PIPELINE_SCHEDULES.register("interleaved_1f1b", ScheduleSpec(ScheduleInterleaved1F1B, multi_stage=True,
                                                             rule=_rounds_rule("ScheduleInterleaved1F1B")))
PIPELINE_SCHEDULES.register("interleaved_zb", ScheduleSpec(ScheduleInterleavedZeroBubble, multi_stage=True,
                                                           split_backward=True,
                                                           rule=_rounds_rule("ScheduleInterleavedZeroBubble")))
PIPELINE_SCHEDULES.register("looped_bfs", ScheduleSpec(ScheduleLoopedBFS, multi_stage=True))
PIPELINE_SCHEDULES.register("zbv", ScheduleSpec(ScheduleZBVZeroBubble, v_shape=True, split_backward=True))
PIPELINE_SCHEDULES.register("dualpipev", ScheduleSpec(ScheduleDualPipeV, v_shape=True, split_backward=True,
                                                      rule=_dualpipev_rule))

from pipelines.training import schedule_csv  # noqa: F401  (registers the csv:PATH form)


def virtual_stages(name: str, requested: int) -> int:
    """Stages per worker of schedule `name`, given `pipeline.virtual_stages`."""
    return PIPELINE_SCHEDULES.get(name).virtual_stages(requested)


def schedule_pieces(name: str, worker: int, stages: int, requested: int) -> list[int]:
    """Model pieces held by pipeline worker `worker` under schedule `name`."""
    return PIPELINE_SCHEDULES.get(name).pieces(worker, stages, requested)


def loss_worker(name: str, stages: int, requested: int) -> int:
    """The pipeline worker that holds the model's last piece, hence the loss (the first one for V shapes)."""
    last = stages * virtual_stages(name, requested) - 1
    return next(w for w in range(stages) if last in schedule_pieces(name, w, stages, requested))


def build_schedule(name: str, stages: list, microbatches: int, loss_fn: Callable | None):
    """torch's schedule over this worker's `stages`; gradients are divided by the micro-batch count."""
    return PIPELINE_SCHEDULES.get(name).build(stages, microbatches, loss_fn)
