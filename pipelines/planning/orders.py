"""Each schedule's per-rank order of compute actions, as torch runs it.

Multi-stage schedules (`ScheduleInterleaved1F1B`, and any `PipelineScheduleMulti` registered in
`PIPELINE_SCHEDULES`) compute their whole table in the constructor (`pipeline_order`, the compute actions
their runtime lowers to sends and receives); we build the registered class over stand-in stage descriptors
(the attributes its constructor reads: no module, no process group) and read that table and its
piece -> rank map. Single-stage schedules run hand-written loops (`_step_microbatches`); their
`_get_pipeline_order` is documentation and, for `Schedule1F1B` in torch 2.14.1, not even a valid order
(the last rank's forwards are numbered from 1). For those we write down the loop's order
(`SINGLE_STAGE_ORDERS`, keyed by torch class); a new single-stage class needs an entry there.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from torch.distributed.pipelining.schedules import (
    PipelineScheduleSingle,
    Schedule1F1B,
    ScheduleGPipe,
)

from pgnet.registry import PIPELINE_SCHEDULES

COMPUTE = ("F", "B", "I", "W")  # forward, full backward, backward for inputs, backward for weights


class Infeasible(Exception):
    """A plan that cannot run (torch refuses the schedule, memory does not fit...); the message says why."""


@dataclass(frozen=True)
class Action:
    kind: str  # one of COMPUTE
    piece: int  # the pipeline piece (stage index over stages x virtual stages)
    microbatch: int


@dataclass(frozen=True)
class ScheduleOrder:
    ranks: tuple[tuple[Action, ...], ...]  # per pipeline rank, in the order it runs them
    piece_rank: tuple[int, ...]  # the rank that holds each piece
    source: str  # where the order comes from

    @property
    def pieces(self) -> int:
        return len(self.piece_rank)


def gpipe_order(rank: int, stages: int, microbatches: int) -> list[Action]:
    """`ScheduleGPipe._step_microbatches`: every forward, then every backward."""
    return ([Action("F", rank, m) for m in range(microbatches)] +
            [Action("B", rank, m) for m in range(microbatches)])


def one_f_one_b_order(rank: int, stages: int, microbatches: int) -> list[Action]:
    """`Schedule1F1B._step_microbatches`: min(M, S - rank) warm-up forwards, then backward/forward pairs,
    then the remaining backwards."""
    warmup = min(microbatches, stages - rank)
    actions = [Action("F", rank, m) for m in range(warmup)]
    forward, backward = warmup, 0
    while True:
        actions.append(Action("B", rank, backward))
        backward += 1
        if forward == microbatches:
            break
        actions.append(Action("F", rank, forward))
        forward += 1
    actions += [Action("B", rank, m) for m in range(backward, microbatches)]
    return actions


SINGLE_STAGE_ORDERS: dict[type, Callable[[int, int, int], list[Action]]] = {
    ScheduleGPipe: gpipe_order,
    Schedule1F1B: one_f_one_b_order,
}


class _StageStandIn:
    """What a multi-stage schedule's constructor reads of its `PipelineStage`s, without a model or group."""

    def __init__(self, stage_index: int, num_stages: int, group_size: int, group_rank: int):
        self.stage_index, self.num_stages = stage_index, num_stages
        self.group_size, self.group_rank = group_size, group_rank
        self.is_first, self.is_last = stage_index == 0, stage_index == num_stages - 1
        self.submod = None  # torch's compile check skips a stage without a module
        self.stage_index_to_group_rank: dict[int, int] = {}


@lru_cache(maxsize=4096)
def schedule_order(schedule: str, stages: int, microbatches: int, virtual: int = 1) -> ScheduleOrder:
    """The order `schedule` runs on `stages` ranks with `microbatches`; `virtual` is `pipeline.virtual_stages`
    (used by multi-stage schedules only). Raises Infeasible with torch's reason when torch refuses it."""
    spec = PIPELINE_SCHEDULES.get(schedule)
    cls = spec.schedule_class
    if issubclass(cls, PipelineScheduleSingle):
        generate = SINGLE_STAGE_ORDERS.get(cls)
        if generate is None:
            raise Infeasible(f"no simulated order for the single-stage schedule {cls.__name__}; add it to "
                             "pipelines.planning.orders.SINGLE_STAGE_ORDERS")
        if cls is Schedule1F1B and microbatches < stages:
            raise Infeasible(f"torch's Schedule1F1B needs microbatches >= stages ({microbatches} < {stages})")
        ranks = tuple(tuple(generate(r, stages, microbatches)) for r in range(stages))
        order = ScheduleOrder(ranks, tuple(range(stages)), f"{cls.__name__}._step_microbatches")
    else:
        try:
            built = _build_on_stand_ins(spec, stages, microbatches, virtual)
        except (ValueError, AssertionError, RuntimeError) as err:
            raise Infeasible(f"torch's {cls.__name__} refuses S={stages}, V={spec.virtual_stages(virtual)}, "
                             f"M={microbatches}: {str(err).splitlines()[0]}") from None
        ranks = tuple(tuple(_compute_actions(built.pipeline_order.get(r, []))) for r in range(stages))
        pieces = stages * spec.virtual_stages(virtual)
        piece_rank = tuple(built.stage_index_to_group_rank[p] for p in range(pieces))
        order = ScheduleOrder(ranks, piece_rank, f"{cls.__name__}.pipeline_order")
    check_order(order, microbatches)
    return order


def _build_on_stand_ins(spec, stages: int, microbatches: int, virtual: int):
    """torch's multi-stage schedule for worker 0 (its constructor plans every worker). The registry entry
    builds it and says which pieces worker 0 holds when it can (`build`, `pieces`); else the class is called
    with worker 0 holding pieces 0, S, 2S, ..."""
    pieces = stages * spec.virtual_stages(virtual)
    if hasattr(spec, "pieces"):
        held = spec.pieces(0, stages, virtual)
    else:
        held = list(range(0, pieces, stages))
    stand_ins = [_StageStandIn(i, pieces, stages, 0) for i in held]
    if hasattr(spec, "build"):
        return spec.build(stand_ins, microbatches, lambda output, target: output)
    return spec.schedule_class(stand_ins, n_microbatches=microbatches)


def _compute_actions(actions) -> list[Action]:
    """torch `_Action`s -> ours: bubbles (None) and non-compute actions dropped, OVERLAP_F_B's parts in order."""
    out = []
    for a in actions:
        if a is None:
            continue
        if a.sub_actions:
            out += _compute_actions(a.sub_actions)
        elif a.computation_type.value in COMPUTE:
            out.append(Action(a.computation_type.value, a.stage_index, a.microbatch_index))
    return out


def check_order(order: ScheduleOrder, microbatches: int) -> None:
    """Every piece runs each micro-batch's forward once and its backward once (B, or I then W), on its rank."""
    seen: dict[tuple[str, int, int], int] = {}
    for rank, actions in enumerate(order.ranks):
        for a in actions:
            if order.piece_rank[a.piece] != rank:
                raise Infeasible(f"{order.source}: rank {rank} runs {a} of a piece held by rank "
                                 f"{order.piece_rank[a.piece]}")
            key = (a.kind, a.piece, a.microbatch)
            seen[key] = seen.get(key, 0) + 1
    for p in range(order.pieces):
        for m in range(microbatches):
            full = seen.get(("B", p, m), 0)
            split = (seen.get(("I", p, m), 0), seen.get(("W", p, m), 0))
            if seen.get(("F", p, m), 0) != 1 or not ((full, split) in ((1, (0, 0)), (0, (1, 1)))):
                raise Infeasible(f"{order.source}: piece {p}, micro-batch {m} is not run exactly once forward and "
                                 "once backward")
