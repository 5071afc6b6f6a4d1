"""`pgnet report`: a sweep's results as the paper's Table 3 (backbone x norm), read only from MLflow.

Each trial is scored at its best evaluation (highest `metric`, or lowest with mode "min", as for `loss`);
every column comes from that same step.
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from pgnet.config import BACKBONES, BOX_LOSSES, NORMS
from pgnet.evaluation.coco_eval import format_stat
from pipelines.tracking import PARENT_TAG, ROLE_TAG, TRIAL_TAG, tracking_uri

log = logging.getLogger("pgnet.report")

TABLE3_ROWS = ("model.backbone", "model.norm")
TABLE3_COLUMNS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APS", "bbox/APM", "bbox/APL", "keypoints/AP")
ALSO_READ = ("keypoints/AP50", "keypoints/AP75")  # in the CSV beside the table's columns
# ASHA stops a trial by ending it KILLED: its evaluations up to then are real, so it competes.
COUNTED_STATUSES = ("FINISHED", "KILLED")
STOPPED_EARLY = "KILLED"
STOPPED_MARK = "†"
# Params that differ between trials without being a swept choice.
BOOKKEEPING_PREFIXES = ("tracking.",)
KNOWN_ORDER = {"model.backbone": BACKBONES, "model.norm": NORMS, "loss.box": BOX_LOSSES}
LABELS = {"model.backbone": "Backbone", "model.norm": "Norm", "loss.box": "Box loss"}
LOSS_KEY = "loss.box"
PLOT_LABELS = {"bbox/AP": "box AP", "keypoints/AP": "key-point AP"}


class ReportError(ValueError):
    """The MLflow store has nothing this report can be built from, as asked."""


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
class Report:
    """A sweep's trial runs, scored; the table groups the counted ones by `rows` (param keys)."""

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
        cells = [Cell(key, max(group, key=lambda t: _rank(t, self.metric, self.mode)), len(group),
                      sum(t.stopped_early for t in group)) for key, group in groups.items()]
        return sorted(cells, key=lambda c: [_value_order(k, v) for k, v in zip(self.rows, c.key)])

    @property
    def other_swept(self) -> list[str]:
        """Swept params that are not table rows: what the best trial of a cell is described by."""
        return [k for k in self.swept if k not in self.rows]

    # ------------------------------------------------------------------ Markdown

    def table_markdown(self) -> str:
        """The Table 3 layout: one row per group, values in % with one decimal."""
        loss = LOSS_KEY not in self.rows
        others = [k for k in self.other_swept if k != LOSS_KEY]
        header = [_label(k) for k in self.rows] + [_column_label(c) for c in self.columns]
        header += (["best trial's loss"] if loss else []) + (["other swept params"] if others else [])
        header += ["best trial", "trials"]
        lines = [_md_row(header), _md_row(["---"] * len(header))]
        for cell in self.cells:
            best = cell.best
            row = list(cell.key) + [format_percent(best.values.get(c)) for c in self.columns]
            if loss:
                row.append(best.params.get(LOSS_KEY, "—"))
            if others:
                row.append(", ".join(f"{k}={best.params.get(k, '—')}" for k in others))
            row.append(_trial_label(best))
            row.append(str(cell.trials) + (f" ({cell.stopped_early} stopped early)" if cell.stopped_early else ""))
            lines.append(_md_row(row))
        return "\n".join(lines)

    def trials_markdown(self) -> str:
        """Every trial run: the params that vary across trials, its status and its best `metric`."""
        header = ["trial", *self.swept, "status", "best epoch", "step", _column_label(self.metric)]
        lines = [_md_row(header), _md_row(["---"] * len(header))]
        for t in sorted(self.trials, key=lambda t: _rank(t, self.metric, self.mode), reverse=True):
            status = t.status + _uncounted_reason(t)
            epoch = "—" if t.epoch is None else f"{t.epoch:g}"
            lines.append(_md_row([t.trial_id, *[t.params.get(k, "—") for k in self.swept], status, epoch,
                                  "—" if t.step is None else str(t.step),
                                  format_metric(self.metric, t.values.get(self.metric))]))
        return "\n".join(lines)

    def to_markdown(self) -> str:
        counted = self.counted
        stopped = sum(t.stopped_early for t in counted)
        by = ", ".join(_label(k) for k in self.rows)
        parts = [
            f"# {self.experiment}: best trial per {by}",
            "",
            self.table_markdown(),
            "",
            f"Values in %, each row the trial with the {'lowest' if self.mode == 'min' else 'highest'} "
            f"`{self.metric}` in its group, every value "
            f"read at that trial's best evaluation (one step, never mixed across epochs). "
            f"n/a: COCOeval had no ground truth in that size range. {len(counted)} of {len(self.trials)} "
            f"trial runs counted ({', '.join(COUNTED_STATUSES)} with an evaluation).",
        ]
        if stopped:
            parts.append(f"{STOPPED_MARK} stopped early by the ASHA scheduler (run status KILLED; an interrupted "
                         f"trial ends KILLED too): its evaluations before the stop are real and count; "
                         f"{stopped} counted trial(s) stopped early.")
        parts += [f"- {note}" for note in self.notes]
        parts += ["", "## Every trial", "", self.trials_markdown(), ""]
        return "\n".join(parts)

    # ------------------------------------------------------------------ CSV and plot

    def csv_header(self) -> list[str]:
        metrics = list(dict.fromkeys([*self.columns, *ALSO_READ, self.metric]))
        return [*self.rows, *metrics, "trials", "stopped_early", "best_trial_id", "best_run_id", "best_status",
                "best_step", "best_epoch", *self.other_swept]

    def to_csv(self, path: str | Path) -> Path:
        """One line per table row; metric values as logged (fractions, -1 = no ground truth in that range)."""
        path = Path(path)
        header = self.csv_header()
        metrics = header[len(self.rows):header.index("trials")]
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for cell in self.cells:
                best = cell.best
                writer.writerow([*cell.key, *[_csv_value(best.values.get(m)) for m in metrics], cell.trials,
                                 cell.stopped_early, best.trial_id, best.run_id, best.status, best.step,
                                 "" if best.epoch is None else f"{best.epoch:g}",
                                 *[best.params.get(k, "") for k in self.other_swept]])
        return path

    def plot(self, path: str | Path) -> Path:
        """Grouped bars of box AP and key-point AP (%) per table row, as a PNG."""
        path = Path(path)
        cells = self.cells
        bars = [m for m in ("bbox/AP", "keypoints/AP") if m in self.columns] or [self.metric]
        fig = Figure(figsize=(max(6.0, 1.1 * len(cells) + 2), 4.5), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        width = 0.8 / len(bars)
        for b, metric in enumerate(bars):
            xs = [i + (b - (len(bars) - 1) / 2) * width for i in range(len(cells))]
            heights = [_percent(c.best.values.get(metric)) for c in cells]
            drawn = ax.bar(xs, [0.0 if h is None else h for h in heights], width, label=PLOT_LABELS.get(metric, metric))
            ax.bar_label(drawn, labels=["n/a" if h is None else f"{h:.1f}" for h in heights], fontsize="x-small")
        ax.set_xticks(range(len(cells)),
                      ["\n".join(c.key) + (STOPPED_MARK if c.best.stopped_early else "") for c in cells],
                      fontsize="small")
        ax.set_ylabel("AP (%)")
        ax.set_title(f"{self.experiment}: best trial per {' x '.join(_label(k) for k in self.rows)}")
        ax.legend(fontsize="small")
        ax.grid(True, axis="y", alpha=0.3)
        fig.savefig(path, format="png")
        return path


# ---------------------------------------------------------------------- formatting

def format_metric(metric: str, value: float | None) -> str:
    """COCO stats in % (`format_percent`), anything else (a loss) as logged."""
    if metric.startswith(("keypoints/", "bbox/")) or value is None:
        return format_percent(value)
    return f"{value:.4f}"


def format_percent(value: float | None) -> str:
    """A COCO stat as % with one decimal; "n/a" for COCOeval's -1, "—" when it was not logged."""
    return "—" if value is None or math.isnan(value) else format_stat(value)


def _percent(value: float | None) -> float | None:
    if value is None or math.isnan(value) or value < 0:  # COCOeval's -1 (no ground truth) is its only negative
        return None
    return 100.0 * value


def _csv_value(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _label(key: str) -> str:
    return LABELS.get(key, key)


def _column_label(metric: str) -> str:
    kind, _, stat = metric.partition("/")
    if kind == "bbox":
        return "AP_bbox" if stat == "AP" else stat
    if kind == "keypoints":
        return f"kp {stat}"
    return metric


def _uncounted_reason(trial: TrialResult) -> str:
    if trial.counted:
        return ""
    return " (no evaluation)" if trial.status in COUNTED_STATUSES else " (not counted)"


def _trial_label(trial: TrialResult) -> str:
    epoch = "" if trial.epoch is None else f" (epoch {trial.epoch:g})"
    return f"{trial.trial_id}{epoch}{STOPPED_MARK if trial.stopped_early else ''}"


def default_mode(metric: str) -> str:
    """"min" for losses, "max" for COCO stats."""
    return "min" if metric == "loss" or metric.startswith("loss/") else "max"


def _oriented(value: float, mode: str) -> float:
    """`value` such that higher is better."""
    return -value if mode == "min" else value


def _rank(trial: TrialResult, metric: str, mode: str = "max") -> tuple:
    """Higher is better: the metric (`_oriented` by mode), then a finished trial over a stopped one,
    then the earlier run."""
    value = trial.values.get(metric)
    score = -math.inf if value is None or math.isnan(value) else _oriented(value, mode)
    return (trial.step is not None, score, not trial.stopped_early, -trial.start_time)


def _value_order(key: str, value: str) -> tuple:
    """Known choices in the config's order (resnet18 < resnet34 < ...), numbers numerically, else by name."""
    known = KNOWN_ORDER.get(key, ())
    if value in known:
        return (0, known.index(value), 0.0, "")
    try:
        return (1, 0, float(value), "")
    except ValueError:
        return (2, 0, 0.0, value)


# ---------------------------------------------------------------------- reading MLflow

def build_report(experiment: str, tracking_uri: str | None = None, metric: str = "keypoints/AP",
                 rows: str | Sequence[str] = TABLE3_ROWS, columns: str | Sequence[str] = TABLE3_COLUMNS,
                 sweep_run_id: str | None = None, mode: str | None = None) -> Report:
    """The sweep `experiment`'s trials from the MLflow store, grouped by `rows`, best by `metric`
    (the highest, or the lowest with `mode` "min"; None: `default_mode`).

    Reads the trials of `sweep_run_id`, or of the latest sweep (parent run) in the experiment.
    FINISHED and KILLED (stopped early by ASHA) trials with an evaluation are counted; others are
    listed in the every-trial table only.
    """
    mode = mode or default_mode(metric)
    if mode not in ("max", "min"):
        raise ReportError(f"mode must be max or min, got {mode!r}")
    uri = _checked_uri(tracking_uri)
    client = MlflowClient(uri)
    exp = _find_experiment(client, experiment, uri)
    notes: list[str] = []
    parent = _sweep_parent(client, exp.experiment_id, experiment, sweep_run_id, notes)
    runs = _trial_runs(client, exp.experiment_id, parent)
    if not runs:
        where = f"sweep run {parent}" if parent else f"experiment '{experiment}'"
        raise ReportError(f"{where} has no trial runs (runs tagged {ROLE_TAG}=trial) in {uri}: the sweep has not "
                          "started a trial yet, or this experiment was not written by `pgnet sweep`")
    rows, columns = _keys(rows), _keys(columns)
    _check_keys(runs, metric, rows)
    wanted = list(dict.fromkeys([metric, *columns, *ALSO_READ, "epoch"]))
    trials = [_score_trial(client, run, metric, wanted, mode) for run in runs]
    _note_uncounted(trials, notes)
    if not any(t.counted for t in trials):
        raise ReportError(f"none of the {len(trials)} trial runs of '{experiment}' is FINISHED or KILLED with an "
                          f"evaluation of '{metric}' (statuses: {_status_counts(trials)}); wait for the sweep's "
                          "first evaluations, or check the trials' logs if they failed")
    return Report(experiment, metric, rows, columns, trials, _swept_params(trials), parent, notes, mode)


def write_report(report: Report, out: str | Path) -> dict[str, Path]:
    """`out.md`, `out.csv` and `out.png` (`out` is a path stem; its folder is created)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("") if out.suffix in (".md", ".csv", ".png") else out
    md = stem.with_name(stem.name + ".md")
    md.write_text(report.to_markdown())
    return {"markdown": md, "csv": report.to_csv(stem.with_name(stem.name + ".csv")),
            "plot": report.plot(stem.with_name(stem.name + ".png"))}


def _checked_uri(uri: str | None) -> str:
    """The store's URI; an SQLite file that does not exist is an error (MLflow would create an empty one)."""
    uri = tracking_uri(uri)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix):]).is_file():
        raise ReportError(f"no MLflow store at {uri[len(prefix):]}: run `pgnet report` in the folder where the "
                          "sweep ran, or point MLFLOW_TRACKING_URI (or --tracking-uri) at its store")
    return uri


def _find_experiment(client: MlflowClient, name: str, uri: str):
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY))
        state = "was deleted" if exp is not None else "does not exist"
        raise ReportError(f"MLflow experiment '{name}' {state} in {uri}; experiments there: "
                          f"{', '.join(names) or '(none)'}. Pass the sweep's name (the experiment a sweep writes to).")
    return exp


def _search(client: MlflowClient, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, ViewType.ACTIVE_ONLY, max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _sweep_parent(client: MlflowClient, experiment_id: str, experiment: str, sweep_run_id: str | None,
                  notes: list[str]) -> str | None:
    """The parent run whose trials are reported: the one asked for, else the latest sweep (None: no parent runs)."""
    parents = _search(client, experiment_id, f"tags.`{ROLE_TAG}` = 'sweep'")
    if sweep_run_id is not None:
        if sweep_run_id not in {p.info.run_id for p in parents}:
            known = ", ".join(p.info.run_id for p in parents) or "(none)"
            raise ReportError(f"run {sweep_run_id} is not a sweep run of '{experiment}'; its sweep runs: {known}")
        return sweep_run_id
    if not parents:
        return None
    latest = parents[-1]
    if len(parents) > 1:
        notes.append(f"The experiment holds {len(parents)} sweeps; this report covers the latest "
                     f"(run {latest.info.run_id}); pass its run id to report another.")
    return latest.info.run_id


def _trial_runs(client: MlflowClient, experiment_id: str, parent: str | None) -> list:
    query = f"tags.`{ROLE_TAG}` = 'trial'"
    if parent is not None:
        query += f" and tags.`{PARENT_TAG}` = '{parent}'"
    return _search(client, experiment_id, query)


def _keys(keys: str | Sequence[str]) -> tuple[str, ...]:
    return (keys,) if isinstance(keys, str) else tuple(keys)  # "loss.box" is one key, not 8 letters


def _check_keys(runs: list, metric: str, rows: tuple[str, ...]) -> None:
    params = sorted({k for r in runs for k in r.data.params})
    missing = [k for k in rows if not any(k in r.data.params for r in runs)]
    if missing:
        raise ReportError(f"no trial has the param '{missing[0]}' to group rows by; params of the trials: "
                          f"{', '.join(params)}")
    if not any(metric in r.data.metrics for r in runs):
        metrics = sorted({k for r in runs for k in r.data.metrics})
        raise ReportError(f"no trial logged the metric '{metric}'; metrics of the trials: "
                          f"{', '.join(metrics) or '(none: no trial has logged anything yet)'}")


def _score_trial(client: MlflowClient, run, metric: str, wanted: list[str], mode: str = "max") -> TrialResult:
    info = run.info
    trial = TrialResult(info.run_id, run.data.tags.get(TRIAL_TAG, info.run_name or info.run_id[:8]),
                        info.status, dict(run.data.params), info.start_time or 0)
    history = _by_step(client.get_metric_history(info.run_id, metric)) if metric in run.data.metrics else {}
    if not history:
        return trial
    # the best value (highest, or lowest with mode "min"); on a tie the earlier evaluation (reached first)
    trial.step = max(history, key=lambda step: (_oriented(history[step], mode), -step))
    for name in wanted:
        if name == metric:
            values = history  # fetched above
        else:
            values = _by_step(client.get_metric_history(info.run_id, name)) if name in run.data.metrics else {}
        if trial.step in values:
            trial.values[name] = values[trial.step]
    trial.epoch = trial.values.pop("epoch", None)
    return trial


def _by_step(history: list) -> dict[int, float]:
    """step -> value; a step logged twice (a retried flush) keeps its latest value, NaN is dropped."""
    out: dict[int, tuple[int, float]] = {}
    for m in history:
        if not math.isnan(m.value) and (m.step not in out or m.timestamp >= out[m.step][0]):
            out[m.step] = (m.timestamp, m.value)
    return {step: value for step, (_, value) in out.items()}


def _swept_params(trials: list[TrialResult]) -> list[str]:
    keys = sorted({k for t in trials for k in t.params if not k.startswith(BOOKKEEPING_PREFIXES)})
    return [k for k in keys if len({t.params.get(k) for t in trials}) > 1]


def _status_counts(trials: list[TrialResult]) -> str:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def _note_uncounted(trials: list[TrialResult], notes: list[str]) -> None:
    uncounted = [t for t in trials if not t.counted]
    if uncounted:
        notes.append(f"Not counted: {len(uncounted)} trial run(s) ({_status_counts(uncounted)}) that are not "
                     f"FINISHED/KILLED or have no evaluation; listed below.")
        log.info("report: %d trial runs not counted (%s)", len(uncounted), _status_counts(uncounted))
