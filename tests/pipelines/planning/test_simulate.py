"""The step simulator against step times worked out by hand."""
from __future__ import annotations

import dataclasses

import pytest

from pipelines.planning.cluster import LinkSpec
from pipelines.planning.costs import CostTable
from pipelines.planning.orders import schedule_order
from pipelines.planning.plan import Plan
from pipelines.planning.simulate import simulate_step
from tests.pipelines.planning.conftest import GIB, cluster, table


def run(plan: Plan, costs, spec, optimizer_states: int = 2):
    order = schedule_order(plan.schedule, plan.stages, plan.microbatches, plan.virtual_stages)
    return simulate_step(plan, order, costs, spec, optimizer_states)


@pytest.mark.parametrize("stages, microbatches", [(2, 4), (4, 8), (4, 4)])
def test_gpipe_equal_stages_without_communication_is_the_bubble_formula(equal_units, stages, microbatches):
    plan = Plan(stages, 1, microbatches, "gpipe", 1, tuple([4 // stages] * stages))
    result = run(plan, equal_units, cluster())
    f, b = 4 / stages * 1.0, 4 / stages * 2.0  # a stage's forward and backward per micro-batch
    assert result.step_s == pytest.approx((microbatches + stages - 1) * (f + b), abs=1e-9)
    assert result.bubble == pytest.approx((stages - 1) / (microbatches + stages - 1), abs=1e-9)
    assert result.p2p_bytes == 0 and result.allreduce_s == 0


def test_1f1b_takes_gpipes_time_with_fewer_micro_batches_in_flight(equal_units):
    gpipe = run(Plan(2, 1, 4, "gpipe", 1, (2, 2)), equal_units, cluster())
    one_f = run(Plan(2, 1, 4, "1f1b", 1, (2, 2)), equal_units, cluster())
    assert one_f.step_s == pytest.approx(gpipe.step_s, abs=1e-9) == pytest.approx(5 * 6.0)
    # a micro-batch held on a stage: its input (one 32x32 RGB float32 image on stage 0; stage 1 receives an
    # empty bus) and 2 units x 1000 saved bytes. GPipe holds all 4; torch's 1F1B S - stage of them.
    held = [3 * 32 * 32 * 4 + 2000, 0 + 2000]
    assert gpipe.activation_bytes == (4 * held[0], 4 * held[1])
    assert one_f.activation_bytes == (2 * held[0], 1 * held[1])


def test_messages_between_stages_add_latency_and_bytes_over_bandwidth():
    costs = table([1.0, 1.0], send_bytes=2_000_000)  # 2 MB on the cut
    link_s = 1e-3 + 2_000_000 / 1e9  # 1 ms + 2 MB at 1 GB/s
    result = run(Plan(2, 1, 1, "gpipe", 1, (1, 1)), costs, cluster(2, bandwidth_gb_s=1.0, latency_us=1000))
    # F0 -> message -> F1, B1 -> message -> B0
    assert result.step_s == pytest.approx(1 + link_s + 1 + 2 + link_s + 2, abs=1e-12)
    assert result.p2p_bytes == 2 * 2_000_000  # the activation forward, its gradient back


def test_data_parallel_adds_a_ring_all_reduce_of_each_stages_parameters():
    costs = table([1.0] * 4, param_bytes=3_000_000)
    spec = cluster(8, per_node=2, bandwidth_gb_s=100.0, latency_us=5.0, inter=LinkSpec(10.0, 50.0))
    one = run(Plan(2, 1, 4, "1f1b", 1, (2, 2)), costs, spec)
    for replicas in (2, 4):
        result = run(Plan(2, replicas, 4, "1f1b", 1, (2, 2)), costs, spec)
        # Worked out apart from comm.py: world rank = replica x 2 + stage, 2 devices per node, so each stage's
        # replicas sit on different nodes: the ring runs over the inter-node link. Each stage holds 6 MB.
        ring = 2 * (replicas - 1) / replicas * 6e6 / 10e9 + 2 * (replicas - 1) * 50e-6
        assert result.allreduce_s == pytest.approx(ring, rel=1e-12)
        assert result.step_s == pytest.approx(one.step_s + ring, rel=1e-12)
        assert result.allreduce_bytes == pytest.approx(2 * replicas * 2 * (replicas - 1) / replicas * 6e6)
        # AdamW: parameters, gradients and 2 moments, plus the flat all-reduce buffer with D > 1
        assert result.peak_bytes[0] - result.activation_bytes[0] == 6e6 * 5
    assert one.peak_bytes[0] - one.activation_bytes[0] == 6e6 * 4


def test_replicas_within_a_node_reduce_over_the_intra_node_link():
    costs = table([1.0] * 4, param_bytes=1_000_000)
    spec = cluster(8, per_node=8, bandwidth_gb_s=100.0, latency_us=5.0)
    result = run(Plan(2, 4, 4, "gpipe", 1, (2, 2)), costs, spec)
    assert result.allreduce_s == pytest.approx(2 * 3 / 4 * 2e6 / 100e9 + 2 * 3 * 5e-6, rel=1e-12)


def test_interleaving_shrinks_the_bubble_by_the_virtual_stages(equal_units):
    # 4 pieces of one unit over 2 ranks: (S - 1) piece-times of forward + backward lost instead of (S - 1) stage-times
    result = run(Plan(2, 1, 4, "interleaved_1f1b", 2, (1, 1, 1, 1)), equal_units, cluster())
    assert result.step_s == pytest.approx(4 * 2 * 3.0 + 1 * 3.0, abs=1e-9)
    assert result.bubble == pytest.approx(3.0 / 27.0, abs=1e-9)


def test_optimizer_state_counts_in_the_peak():
    costs = table([1.0] * 2, param_bytes=GIB)
    adamw = run(Plan(1, 1, 1, "gpipe", 1, (2,)), costs, cluster(), optimizer_states=2)
    sgd = run(Plan(1, 1, 1, "gpipe", 1, (2,)), costs, cluster(), optimizer_states=0)
    assert adamw.peak_bytes[0] - sgd.peak_bytes[0] == 2 * 2 * GIB


def test_synchronised_norms_add_small_all_reduces_to_forward_and_backward():
    costs = table([1.0, 1.0])
    costs = CostTable(tuple(dataclasses.replace(u, sync_norms=3, sync_norm_bytes=3 * 2052) for u in costs.units))
    spec = cluster(8, bandwidth_gb_s=100.0, latency_us=5.0)
    plain = run(Plan(1, 1, 2, "gpipe", 1, (2,)), costs, spec)
    synced = run(Plan(1, 8, 2, "gpipe", 1, (2,)), costs, spec)
    # each forward and backward (2 micro-batches) of the 2-unit piece: 6 all-reduces over 8 ranks, by tree:
    # 2 log2(8) latencies each, twice their bytes at the link (a ring would pay 2 x 7 latencies each)
    one_action = 6 * 2 * 3 * 5e-6 + 2 * 6 * 2052 / 100e9
    assert synced.norm_sync_s == pytest.approx(2 * 2 * one_action, rel=1e-9)
    gradients = 2 * 3 * 5e-6  # the gradient all-reduce (no parameters here): its tree latencies alone
    assert synced.step_s == pytest.approx(plain.step_s + 2 * 2 * one_action + gradients, rel=1e-9)
    assert synced.bubble == pytest.approx(0.0, abs=1e-12)  # one stage: norm syncs are work, not a bubble


@pytest.mark.parametrize("schedule, virtual", [("gpipe", 1), ("1f1b", 1), ("zbv", 2)])
def test_ranks_sharing_one_core_take_the_whole_work_in_turn(equal_units, schedule, virtual):
    """One core for all ranks and no communication: the core is never idle while work is ready, so the step
    is the sum of every action's time (4 micro-batches x 4 units x 3 s)."""
    plan = Plan(2, 1, 4, schedule, virtual, tuple([4 // (2 * virtual)] * (2 * virtual)))
    shared = dataclasses.replace(cluster(2), cores_per_node=1)
    assert run(plan, equal_units, shared).step_s == pytest.approx(4 * 4 * 3.0, rel=1e-9)


@pytest.mark.parametrize("schedule, virtual", [("gpipe", 1), ("1f1b", 1), ("interleaved_zb", 2)])
def test_ranks_with_a_core_each_run_as_on_their_own_devices(equal_units, schedule, virtual):
    plan = Plan(2, 1, 4, schedule, virtual, tuple([4 // (2 * virtual)] * (2 * virtual)))
    own = run(plan, equal_units, cluster(2))
    shared = run(plan, equal_units, dataclasses.replace(cluster(2), cores_per_node=2))
    assert shared.step_s == pytest.approx(own.step_s, rel=1e-9)
    assert shared.bubble == pytest.approx(own.bubble, rel=1e-9)


def test_concurrent_speed_slows_only_the_overlapping_computes(equal_units):
    """GPipe, two units per stage (forward 2 s, backward 4 s per micro-batch). M=1: F0, F1, B1, B0 one after
    the other, never together, so a concurrent speed of 0.5 changes nothing; with M=2 they overlap."""
    base = dataclasses.replace(cluster(2), cores_per_node=2)
    slow = dataclasses.replace(base, device=dataclasses.replace(base.device, concurrent_speed=0.5))
    one = Plan(2, 1, 1, "gpipe", 1, (2, 2))
    assert run(one, equal_units, slow).step_s == pytest.approx(run(one, equal_units, base).step_s) == 12.0
    two = Plan(2, 1, 2, "gpipe", 1, (2, 2))
    # F(0,0) 0-2 alone; F(0,1) and F(1,0) together at half speed: 2 s of work each ends at 6; F(1,1) alone
    # 6-8; B(1,0) alone 8-12; B(1,1) and B(0,0) together: 4 s each at half speed, 12-20; B(0,1) alone 20-24
    assert run(two, equal_units, slow).step_s == pytest.approx(24.0)
    assert run(two, equal_units, base).step_s == pytest.approx(3 * 6.0)


def test_the_optimiser_update_ends_the_step(equal_units):
    costs = CostTable(tuple(dataclasses.replace(u, optimizer_s=0.25) for u in equal_units.units))
    plan = Plan(2, 1, 4, "1f1b", 1, (3, 1))
    assert run(plan, costs, cluster()).step_s == pytest.approx(run(plan, equal_units, cluster()).step_s + 0.75)
