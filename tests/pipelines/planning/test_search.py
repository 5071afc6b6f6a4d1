"""The plan search: the cut, the memory limit and the schedule constraints it must respect."""
from __future__ import annotations

import pytest

from pipelines.planning.search import candidate_settings, neighbour_cuts, search_plans
from tests.pipelines.planning.conftest import cluster, table

# Per image: forward 1, 1, 1, 5 s (backward twice that); 1 GiB of parameters per unit, so one device holds
# 4 GiB x (parameters, gradients, 2 AdamW moments) = 16 GiB with the whole network, 12 GiB with units 0-2.
UNBALANCED = {"forward": [1.0, 1.0, 1.0, 5.0], "param_bytes": 2**30}


def test_without_a_memory_limit_data_parallel_wins():
    costs = table(**UNBALANCED)
    best = search_plans(costs, cluster(2), batch=4, schedules=["gpipe"], neighbours=1, progress=False)[0]
    # two replicas of the whole network, 2 images each, no communication cost: 2 x 24 s
    assert (best.plan.stages, best.plan.data_parallel) == (1, 2)
    assert best.result.step_s == pytest.approx(48.0)


def test_a_memory_limit_rules_out_the_fastest_plan_and_the_search_picks_the_cut_worked_out_by_hand():
    costs = table(**UNBALANCED)
    plans = search_plans(costs, cluster(2, memory_gib=14.0), batch=4, schedules=["gpipe"], neighbours=1, progress=False)
    best = plans[0]
    # [3, 1] puts 9 s and 15 s per image on the stages, [2, 2] 6 s and 18 s: the slower stage decides
    assert best.feasible and best.plan.balance == (3, 1)
    assert (best.plan.stages, best.plan.data_parallel, best.plan.microbatches) == (2, 1, 4)
    # GPipe, M = 4 one-image micro-batches, stage 1 the bottleneck: f0 + M f1 + M b1 + b0 = 3 + 20 + 40 + 6
    assert best.result.step_s == pytest.approx(69.0)
    single = [e for e in plans if e.plan.stages == 1]
    assert single and all(not e.feasible and "GiB" in e.reason for e in single)
    assert max(e.images_per_s for e in single) > best.images_per_s  # the faster plans were the ones ruled out
    two_two = [e for e in plans if e.plan.balance == (2, 2) and e.plan.microbatches == 4]
    assert two_two and two_two[0].result.step_s > best.result.step_s


def test_schedule_constraints_come_from_the_registry():
    costs = table([1.0] * 4)
    plans = search_plans(costs, cluster(4), batch=2, schedules=["1f1b"], progress=False)
    refused = [e for e in plans if e.plan.stages == 4 and e.plan.microbatches < 4]
    assert refused and all(not e.feasible and "microbatches >= pipeline.stages" in e.reason for e in refused)


def test_candidates_respect_devices_batch_and_units():
    found = list(candidate_settings(devices=8, batch=12, units=3, schedules=["gpipe", "interleaved_1f1b"],
                                    virtual_options=[2]))
    assert found and all(S * D <= 8 and 12 % D == 0 and (12 // D) % M == 0 and S * V <= 3 for S, D, M, _, V in found)
    assert {S for S, *_ in found} == {1, 2, 3} and {V for *_, V in found} == {1, 2}


def test_neighbour_cuts_move_one_cut_point_keeping_every_piece():
    assert neighbour_cuts([2, 2], 1) == [(2, 2), (1, 3), (3, 1)]
    assert neighbour_cuts([1, 3], 1) == [(1, 3), (2, 2)]


def test_every_registered_schedule_has_feasible_plans():
    from pgnet.registry import PIPELINE_SCHEDULES
    plans = search_plans(table([1.0] * 8), cluster(4), batch=8, progress=False)
    found = {e.plan.schedule for e in plans if e.feasible and e.plan.stages == 2}
    assert found == set(PIPELINE_SCHEDULES.names())


def test_max_microbatches_bounds_the_search():
    plans = search_plans(table([1.0] * 4), cluster(2), batch=16, schedules=["gpipe"], max_microbatches=4,
                         progress=False)
    assert {e.plan.microbatches for e in plans} == {1, 2, 4}
