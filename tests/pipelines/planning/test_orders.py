"""Schedule orders: torch's own tables for multi-stage schedules, the loops' orders for single-stage ones."""
from __future__ import annotations

import pytest
from torch.distributed.pipelining.schedules import ScheduleGPipe, ScheduleLoopedBFS

from pgnet.registry import PIPELINE_SCHEDULES
from pipelines.planning.orders import Infeasible, check_order, schedule_order
from pipelines.training.schedules import ScheduleSpec


class _Stage:
    """The attributes `PipelineScheduleSingle.__init__` reads."""
    def __init__(self, stages: int):
        self.num_stages, self.stage_index = stages, 0


def test_gpipe_order_is_torchs_own_table():
    ours = schedule_order("gpipe", 3, 5)
    theirs = ScheduleGPipe(_Stage(3), n_microbatches=5).pipeline_order
    for rank in range(3):
        compute = [(a.computation_type.value, a.stage_index, a.microbatch_index) for a in theirs[rank]
                   if a is not None and a.computation_type.value in "FB"]
        assert [(a.kind, a.piece, a.microbatch) for a in ours.ranks[rank]] == compute


@pytest.mark.parametrize("stages, microbatches", [(2, 4), (4, 4), (4, 9)])
def test_1f1b_keeps_stages_minus_rank_micro_batches_in_flight(stages, microbatches):
    """Schedule1F1B._step_microbatches warms up with min(M, S - stage) forwards, then alternates."""
    order = schedule_order("1f1b", stages, microbatches)
    for rank, actions in enumerate(order.ranks):
        live = peak = 0
        for a in actions:
            live += 1 if a.kind == "F" else -1
            peak = max(peak, live)
        assert peak == min(microbatches, stages - rank)


@pytest.mark.parametrize("name", PIPELINE_SCHEDULES.names())
def test_every_registered_schedule_gives_a_complete_order(name):
    spec = PIPELINE_SCHEDULES.get(name)
    virtual = spec.virtual_stages(2)
    order = schedule_order(name, 2, 4, 2)
    check_order(order, 4)  # each piece: every micro-batch forward once, backward once, on its rank
    assert order.pieces == 2 * virtual
    assert sorted(set(order.piece_rank)) == [0, 1]


def test_a_newly_registered_multi_stage_schedule_plugs_in():
    PIPELINE_SCHEDULES.register("bfs_for_test", ScheduleSpec(ScheduleLoopedBFS, multi_stage=True))
    try:
        order = schedule_order("bfs_for_test", 2, 3, 3)
        assert order.piece_rank == (0, 1, 0, 1, 0, 1) and order.source == "ScheduleLoopedBFS.pipeline_order"
        # breadth first: rank 0 runs all forwards of piece 0, then of piece 2, then 4
        assert [(a.kind, a.piece) for a in order.ranks[0][:9]] == [("F", 0)] * 3 + [("F", 2)] * 3 + [("F", 4)] * 3
    finally:
        PIPELINE_SCHEDULES.unregister("bfs_for_test")


def test_torchs_refusal_is_an_infeasible_plan():
    with pytest.raises(Infeasible, match="1F1B needs microbatches >= stages"):
        schedule_order("1f1b", 4, 2)
