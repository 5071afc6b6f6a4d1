"""`pgnet plan --validate BENCH.json`: the simulator's step times against measured ones.

A `pgnet bench pipeline --out` record carries `"unit_costs"` (the cost table), `"settings"` (`input_size`,
`batch`, `threads`) and `"results"` rows with `stages`, `schedule`, `microbatches`, `virtual_stages`
(absent: 1), optionally `data_parallel` (absent: 1) and `balance` (absent: the cut `partition` makes),
and the measured `step_s` (median seconds per step) and `step_s_spread` ((max - min) / median
of the runs). Each row is simulated on the
cluster (`this-machine` by default) with those costs and compared; a `settings.concurrent_speed` measured
by the bench replaces the cluster's `device.concurrent_speed`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgnet.errors import ConfigError
from pgnet.registry import PIPELINE_SCHEDULES
from pipelines.planning.cluster import ClusterSpec
from pipelines.planning.costs import read_json_record, table_from_json
from pipelines.planning.orders import Infeasible, schedule_order
from pipelines.planning.plan import Plan
from pipelines.planning.simulate import simulate_step
from pipelines.training.balance import partition

TOLERANCE = 0.15


@dataclass(frozen=True)
class Comparison:
    plan: Plan
    measured_s: float
    spread: float | None  # (max - min) / median of the measured runs
    predicted_s: float | None  # None: the simulator refused the row (`reason`)
    reason: str = ""

    @property
    def error(self) -> float | None:
        return None if self.predicted_s is None else (self.predicted_s - self.measured_s) / self.measured_s

    @property
    def within(self) -> bool:
        return self.error is not None and abs(self.error) <= TOLERANCE


def _field(row: dict, key: str, kind: type, where: str, default: Any = None) -> Any:
    value = row.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: \"{key}\" must be {'a number' if kind is float else kind.__name__}, "
                          f"got {value!r}")
    return value


def validate_bench(path: str | Path, cluster: ClusterSpec) -> list[Comparison]:
    path = Path(path)
    data = read_json_record(path, ("unit_costs", "settings", "results"),
                            "to --validate a `pgnet bench pipeline --out` JSON record written with unit costs")
    return compare_record(data, cluster, str(path))


def compare_record(data: dict[str, Any], cluster: ClusterSpec, where: str = "the bench record") -> list[Comparison]:
    """Every measured row of a bench record (`unit_costs`, `settings`, `results`) against the simulator."""
    costs = table_from_json(data["unit_costs"], where)
    settings = data["settings"]
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: \"settings\" must be an object")
    batch = _field(settings, "batch", int, f"{where}: settings")
    size = settings.get("input_size")
    size = [size, size] if isinstance(size, int) else size
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ConfigError(f"{where}: settings.input_size must be a size in pixels or [height, width], got {size!r}")
    if not isinstance(data["results"], list):
        raise ConfigError(f"{where}: \"results\" must be a list of rows")
    measured_speed = settings.get("concurrent_speed")
    if measured_speed is not None:  # the bench measured this machine's own (`pipelines.bench.contention`)
        if not isinstance(measured_speed, (int, float)) or not 0 < measured_speed <= 1:
            raise ConfigError(f"{where}: settings.concurrent_speed must be in (0, 1], got {measured_speed!r}")
        cluster = dataclasses.replace(cluster, device=dataclasses.replace(cluster.device,
                                                                          concurrent_speed=float(measured_speed)))
    device = cluster.device_costs(costs.at(costs.microbatch, tuple(size)))
    return [_compare_row(row, f"{where}: results[{i}]", batch, device, cluster)
            for i, row in enumerate(data["results"])]


def _compare_row(row: Any, where: str, batch: int, device, cluster: ClusterSpec) -> Comparison:
    if not isinstance(row, dict):
        raise ConfigError(f"{where} must be an object")
    S, M = _field(row, "stages", int, where), _field(row, "microbatches", int, where)
    D = _field(row, "data_parallel", int, where, 1)
    name = _field(row, "schedule", str, where)
    V = PIPELINE_SCHEDULES.get(name).virtual_stages(_field(row, "virtual_stages", int, where, 1))
    measured = _field(row, "step_s", float, where)
    spread = row.get("step_s_spread")
    if batch % (D * M):
        raise ConfigError(f"{where}: settings.batch={batch} is not divisible by data_parallel x microbatches")
    units = device.at(batch // (D * M), device.input_size)
    balance = tuple(row.get("balance") or partition([u.seconds for u in units.units], S * V))
    plan = Plan(S, D, M, name, V, balance)
    try:
        predicted = simulate_step(plan, schedule_order(name, S, M, V), units, cluster).step_s
        return Comparison(plan, measured, spread, predicted)
    except Infeasible as err:
        return Comparison(plan, measured, spread, None, str(err))


def format_comparisons(rows: list[Comparison]) -> str:
    lines = [(f"{'S':>2} {'D':>2} {'schedule':<17} {'V':>2} {'M':>3} {'measured s':>11} {'spread':>7} "
              f"{'predicted s':>11} {'error':>8}  within {TOLERANCE:.0%}")]
    for c in rows:
        p = c.plan
        spread = f"{c.spread:7.1%}" if isinstance(c.spread, (int, float)) else f"{'-':>7}"
        if c.predicted_s is None:
            tail = f"{'-':>11} {'-':>8}  not simulated: {c.reason}"
        else:
            tail = f"{c.predicted_s:>11.4f} {c.error:>+8.1%}  {'yes' if c.within else 'NO'}"
        lines.append(f"{p.stages:>2} {p.data_parallel:>2} {p.schedule:<17} {p.virtual_stages:>2} {p.microbatches:>3} "
                     f"{c.measured_s:>11.4f} {spread}" + " " + tail)
    within = sum(c.within for c in rows)
    lines.append(f"{within} of {len(rows)} configurations predicted within {TOLERANCE:.0%} of the measured step time")
    return "\n".join(lines)
