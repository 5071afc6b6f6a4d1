"""The report's model: trial runs scored at their best evaluation, grouped into cells (table rows).

Ranking too: which trial is best by a metric and mode, and the order of rows (the registries' order).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

from pgnet.registry import ALL

TABLE3_ROWS = ("model.backbone", "model.neck", "model.norm")
TABLE3_COLUMNS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APS", "bbox/APM", "bbox/APL", "keypoints/AP")
ALSO_READ = ("keypoints/AP50", "keypoints/AP75")  # in the CSV beside the table's columns
# ASHA stops a trial by ending it KILLED: its evaluations up to then are real, so it competes.
COUNTED_STATUSES = ("FINISHED", "KILLED")
STOPPED_EARLY = "KILLED"
KNOWN_ORDER = {registry.key: registry for registry in ALL}  # each registry's names, in registration order


@dataclass
class TrialResult:
    """One trial run, scored at its best evaluation (`step`; None when it has no evaluation of the metric)."""

    run_id: str
    trial_id: str
    status: str
    params: dict[str, str]
    start_time: int
    step: int | None = None
    epoch: float | None = None
    values: dict[str, float] = field(default_factory=dict)  # metric name -> value at `step`

    @property
    def counted(self) -> bool:
        return self.status in COUNTED_STATUSES and self.step is not None

    @property
    def stopped_early(self) -> bool:
        return self.status == STOPPED_EARLY


@dataclass
class Cell:
    """One row of the table: the best counted trial of a group, and how many counted trials the group had."""

    key: tuple[str, ...]
    best: TrialResult
    trials: int
    stopped_early: int


@dataclass
class ReportModel:
    """A sweep's trial runs, scored; the table groups the counted ones by `rows` (param keys).
    `Report` (pipelines.sweeps.report_render) adds its Markdown, CSV and plot."""

    experiment: str
    metric: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    trials: list[TrialResult]  # every trial run found, counted or not
    swept: list[str]  # params whose values differ between trials
    sweep_run_id: str | None = None
    notes: list[str] = field(default_factory=list)
    mode: str = "max"  # "min": the lowest `metric` is the best (a loss)

    @property
    def counted(self) -> list[TrialResult]:
        return [t for t in self.trials if t.counted]

    @cached_property
    def cells(self) -> list[Cell]:
        groups: dict[tuple[str, ...], list[TrialResult]] = {}
        for trial in self.counted:
            groups.setdefault(tuple(trial.params.get(k, "—") for k in self.rows), []).append(trial)
        cells = [Cell(key, max(group, key=lambda t: rank(t, self.metric, self.mode)), len(group),
                      sum(t.stopped_early for t in group)) for key, group in groups.items()]
        return sorted(cells, key=lambda c: [_value_order(k, v) for k, v in zip(self.rows, c.key)])

    @property
    def other_swept(self) -> list[str]:
        """Swept params that are not table rows: what the best trial of a cell is described by."""
        return [k for k in self.swept if k not in self.rows]


def default_mode(metric: str) -> str:
    """"min" for losses, "max" for COCO stats."""
    return "min" if metric == "loss" or metric.startswith("loss/") else "max"


def oriented(value: float, mode: str) -> float:
    """`value` such that higher is better."""
    return -value if mode == "min" else value


def rank(trial: TrialResult, metric: str, mode: str = "max") -> tuple:
    """Higher is better: the metric (`oriented` by mode), then a finished trial over a stopped one,
    then the earlier run."""
    value = trial.values.get(metric)
    score = -math.inf if value is None or math.isnan(value) else oriented(value, mode)
    return (trial.step is not None, score, not trial.stopped_early, -trial.start_time)


def _value_order(key: str, value: str) -> tuple:
    """Known choices in the config's order (resnet18 < resnet34 < ...), numbers numerically, else by name."""
    known = KNOWN_ORDER[key].names() if key in KNOWN_ORDER else ()
    if value in known:
        return (0, known.index(value), 0.0, "")
    try:
        return (1, 0, float(value), "")
    except ValueError:
        return (2, 0, 0.0, value)

