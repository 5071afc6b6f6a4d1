"""Every feasible plan for a cluster, simulated and ranked by images/s.

Candidates: S x D <= devices, D dividing the batch, M dividing the batch per replica, every registered
schedule (its constraints from `PIPELINE_SCHEDULES.get(name).check`, torch's own refusals from building
its order), virtual stages from `virtual_options` for multi-stage schedules, and the cut
`pipelines.training.balance.partition` makes of the units' forward+backward times (the one `pgnet train`
would measure), optionally with its neighbours (each cut point moved by one unit). A plan whose peak
memory exceeds a device's is kept in the table as infeasible, with the reason.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache

from pgnet.config import PipelineConfig
from pgnet.progress import progress_bar
from pgnet.registry import PIPELINE_SCHEDULES
from pipelines.planning.cluster import ClusterSpec
from pipelines.planning.costs import CostTable
from pipelines.planning.orders import Infeasible, schedule_order
from pipelines.planning.plan import Plan
from pipelines.planning.simulate import StepResult, simulate_step
from pipelines.training.balance import partition


@dataclass(frozen=True)
class Evaluated:
    plan: Plan
    result: StepResult | None  # None when the plan cannot run
    reason: str = ""  # why it cannot run, or why it does not fit
    images_per_s: float = 0.0

    @property
    def feasible(self) -> bool:
        return self.result is not None and not self.reason


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def neighbour_cuts(balance: list[int], reach: int) -> list[tuple[int, ...]]:
    """`balance` and the cuts with one cut point moved by up to `reach` units (every piece keeps >= 1 unit)."""
    cuts = [tuple(balance)]
    for point in range(len(balance) - 1):
        for step in [s for r in range(1, reach + 1) for s in (-r, r)]:
            moved = list(balance)
            moved[point] += step
            moved[point + 1] -= step
            if min(moved) >= 1 and tuple(moved) not in cuts:
                cuts.append(tuple(moved))
    return cuts


def candidate_settings(devices: int, batch: int, units: int, schedules: Iterable[str],
                       virtual_options: Iterable[int], max_microbatches: int = 0
                       ) -> Iterator[tuple[int, int, int, str, int]]:
    """(S, D, M, schedule, V) with S x D <= devices, D | batch, M | batch / D (and M <= max_microbatches when
    that is > 0), S x V <= units."""
    for S in range(1, min(devices, units) + 1):
        for D in [d for d in divisors(batch) if S * d <= devices]:
            for M in [m for m in divisors(batch // D) if not max_microbatches or m <= max_microbatches]:
                for name in schedules:
                    spec = PIPELINE_SCHEDULES.get(name)
                    for V in sorted({spec.virtual_stages(v) for v in virtual_options}):  # 1 for single-stage
                        if S * V <= units:
                            yield S, D, M, name, V


@cache
def schedule_problem(name: str, stages: int, microbatches: int, virtual: int) -> str | None:
    """The registry's verdict on a schedule's settings (`ScheduleSpec.check`), asked once per setting."""
    return PIPELINE_SCHEDULES.get(name).check(PipelineConfig(stages=stages, schedule=name, microbatches=microbatches,
                                                             virtual_stages=virtual))


def evaluate(plan: Plan, costs: CostTable, cluster: ClusterSpec, batch: int, optimizer_states: int = 2) -> Evaluated:
    """`plan` simulated with `costs` at the plan's micro-batch (`costs` already at the device's speed)."""
    problem = schedule_problem(plan.schedule, plan.stages, plan.microbatches, plan.virtual_stages)
    if problem:
        return Evaluated(plan, None, f"pipeline.schedule={plan.schedule} {problem}")
    try:
        order = schedule_order(plan.schedule, plan.stages, plan.microbatches, plan.virtual_stages)
        microbatch = batch // (plan.data_parallel * plan.microbatches)
        result = simulate_step(plan, order, costs.at(microbatch, costs.input_size), cluster, optimizer_states)
    except Infeasible as err:
        return Evaluated(plan, None, str(err))
    images_per_s = batch / result.step_s if result.step_s > 0 else float("inf")
    peak = max(result.peak_bytes)
    if peak > cluster.usable_memory_bytes:
        return Evaluated(plan, result, f"needs {peak / 2**30:.1f} GiB on a device, "
                                       f"{cluster.usable_memory_bytes / 2**30:.1f} GiB usable", images_per_s)
    return Evaluated(plan, result, "", images_per_s)


def search_plans(costs: CostTable, cluster: ClusterSpec, batch: int, schedules: Iterable[str] | None = None,
                 virtual_options: Iterable[int] = (2,), neighbours: int = 0, optimizer_states: int = 2,
                 max_microbatches: int = 0, progress: bool = True) -> list[Evaluated]:
    """Every candidate, best first (feasible by images/s, then fewer devices; infeasible last).

    `costs`: at one micro-batch of the config's input size, durations already at the device's speed."""
    names = list(schedules or PIPELINE_SCHEDULES.names())
    settings = list(candidate_settings(cluster.devices, batch, len(costs.units), names, virtual_options,
                                       max_microbatches))
    cuts: dict[int, list[tuple[int, ...]]] = {}
    evaluated = []
    for S, D, M, name, V in progress_bar(settings, progress, desc="plans", unit="plan"):
        pieces = S * V
        if pieces not in cuts:
            cuts[pieces] = neighbour_cuts(partition([u.seconds for u in costs.units], pieces), neighbours)
        for balance in cuts[pieces]:
            evaluated.append(evaluate(Plan(S, D, M, name, V, balance), costs, cluster, batch, optimizer_states))
    return sorted(evaluated, key=lambda e: (not e.feasible, -e.images_per_s, e.plan.devices,
                                            max(e.result.peak_bytes) if e.result else 0.0))
