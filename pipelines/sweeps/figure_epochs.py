"""`pgnet report --figure epochs`: the paper's Figure 6, training by epoch, pipelined against not.

Key-point AP and training loss against epoch and wall-clock time, one line per run coloured by its
`pipeline.stages`, and a table per run; read from the MLflow store alone, the trials found as `pgnet report`'s.
"""
from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from mlflow.tracking import MlflowClient

from pipelines.sweeps.report_mlflow import (
    ReportError,
    checked_uri,
    find_experiment,
    latest_by_step,
    search_runs,
    sweep_parent,
    trial_runs,
)
from pipelines.sweeps.report_render import format_percent
from pipelines.tracking.runs import TRIAL_TAG

# MLflow keys of what `step_record` and an evaluation log (`hooks._metric_key` leaves these four as they are)
AP, LOSS, EPOCH, SPEED = "keypoints/AP", "loss", "epoch", "images_per_s"
STAGES = "pipeline.stages"
LINE_STYLES = ("-", "--", ":", "-.")
HEADER = ["run", "S", "schedule", "micro-batches", "epochs", "final kp AP", "best kp AP", "best at epoch",
          "wall time (s)", "time to best (s)", "images/s", "status"]


def _number(spec: str):
    return lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


# how the table shows each HEADER column: AP in %, epochs as logged, seconds and images/s with one decimal
CELL_FORMATS = [str, str, str, str, _number("g"), format_percent, format_percent, _number("g"), _number(".1f"),
                _number(".1f"), _number(".1f"), str]


@dataclass
class Series:
    """One metric of one run, by logged step: its epoch (fractional for step records), its seconds
    since the run's start, and its value."""

    epochs: list[float]
    seconds: list[float]
    values: list[float]


@dataclass
class RunCurves:
    """One run's curves, the params it was started with, and what the table shows of it."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    ap: Series
    loss: Series
    epochs: float | None  # the last epoch logged
    wall_seconds: float  # the run's start to its last logged metric
    images_per_s: float | None  # median of the per-step throughput

    @property
    def stages(self) -> int:
        return int(self.params.get(STAGES, 0))

    @property
    def schedule(self) -> str:
        return self.params.get("pipeline.schedule", "—") if self.stages >= 1 else "none"

    @property
    def best(self) -> int | None:
        """Index of the best evaluation (the highest AP; on a tie the earlier), None without one."""
        values = self.ap.values
        return max(range(len(values)), key=lambda i: (values[i], -i)) if values else None


def read_run(client: MlflowClient, run) -> RunCurves:
    """A run's AP and loss histories, placed by epoch and by seconds since its start."""
    start = run.info.start_time or 0
    histories = {key: latest_by_step(client.get_metric_history(run.info.run_id, key))
                 for key in (AP, LOSS, EPOCH, SPEED) if key in run.data.metrics}
    epoch_of = {step: m.value for step, m in histories.get(EPOCH, {}).items()}

    def series(key: str, fraction: bool) -> Series:
        points = sorted(histories.get(key, {}).items())
        steps = [step for step, _ in points]
        epochs = _fractional_epochs(steps, epoch_of) if fraction else [epoch_of.get(s, math.nan) for s in steps]
        return Series(epochs, [(m.timestamp - start) / 1000 for _, m in points], [m.value for _, m in points])

    stamps = [m.timestamp for history in histories.values() for m in history.values()]
    speeds = [m.value for m in histories.get(SPEED, {}).values()]
    return RunCurves(run.info.run_id, run.data.tags.get(TRIAL_TAG) or run.info.run_name or run.info.run_id[:8],
                     run.info.status, dict(run.data.params), series(AP, False), series(LOSS, True),
                     max(epoch_of.values(), default=None), (max(stamps, default=start) - start) / 1000,
                     statistics.median(speeds) if speeds else None)


def _fractional_epochs(steps: list[int], epoch_of: dict[int, float]) -> list[float]:
    """Step records at epoch e, the k-th of n: e - 1 + k / n (the epoch's last step at e)."""
    per_epoch: dict[float, list[int]] = {}
    for step in steps:
        per_epoch.setdefault(epoch_of.get(step, math.nan), []).append(step)
    place = {step: e - 1 + (k + 1) / len(group) for e, group in per_epoch.items() for k, step in enumerate(group)}
    return [place[step] for step in steps]


@dataclass
class EpochFigure:
    """The runs of Figure 6, as a table (Markdown, CSV) and a 2x2 plot."""

    experiment: str
    runs: list[RunCurves]
    notes: list[str]

    def rows(self) -> list[list]:
        """One row per run (HEADER's columns), raw values: AP as fractions, times in seconds."""
        out = []
        for r in self.runs:
            best = r.best
            out.append([r.name, r.stages, r.schedule, r.params.get("pipeline.microbatches", "—"), r.epochs,
                        r.ap.values[-1] if r.ap.values else None, None if best is None else r.ap.values[best],
                        None if best is None else r.ap.epochs[best], r.wall_seconds,
                        None if best is None else r.ap.seconds[best], r.images_per_s, r.status])
        return out

    def table_markdown(self) -> str:
        lines = [md_row(HEADER), md_row(["---"] * len(HEADER))]
        for row in self.rows():
            lines.append(md_row([shown(v) for shown, v in zip(CELL_FORMATS, row)]))
        return "\n".join(lines)

    def to_markdown(self, plot_name: str | None = None) -> str:
        parts = [f"# Figure 6 ({self.experiment}): training by epoch, pipelined (S >= 2) against not", "",
                 ("Key-point AP in %; times in seconds from each run's start (its MLflow start time); images/s is "
                  "the median of the per-step throughput."), "", self.table_markdown()]
        parts += ["", *(f"- {note}" for note in self.notes)] if self.notes else []
        parts += ["", f"![Figure 6]({plot_name})"] if plot_name else []
        return "\n".join(parts) + "\n"

    def to_csv(self, path: Path) -> Path:
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["run_id", *HEADER])
            for run, row in zip(self.runs, self.rows()):
                writer.writerow([run.run_id, *("" if v is None else v for v in row)])
        return path

    def plot(self, path: Path) -> Path:
        """AP and loss (rows) against epoch and wall-clock time (columns), one line per run."""
        fig = Figure(figsize=(12, 8), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(2, 2)
        scale, unit = _time_unit(max(r.wall_seconds for r in self.runs))
        groups = {s: i for i, s in enumerate(sorted({r.stages for r in self.runs}))}
        seen: dict[int, int] = {}
        for run in self.runs:  # a colour per S; line styles apart, so that equal curves by epoch stay visible
            twin = seen.get(run.stages, 0)  # how many runs of this S came before
            seen[run.stages] = twin + 1
            style = {"color": f"C{groups[run.stages]}", "label": _run_label(run, self.runs),
                     "linestyle": LINE_STYLES[(groups[run.stages] + twin) % len(LINE_STYLES)]}
            ap = [100 * v for v in run.ap.values]
            loss = _running_mean(run.loss.values)
            axes[0, 0].plot(run.ap.epochs, ap, marker="o", **style)
            axes[0, 1].plot([s / scale for s in run.ap.seconds], ap, marker="o", **style)
            axes[1, 0].plot(run.loss.epochs, loss, **style)
            axes[1, 1].plot([s / scale for s in run.loss.seconds], loss, **style)
        for row, what in enumerate(("key-point AP (%)", "training loss (running mean)")):
            for col, against in enumerate(("epoch", f"wall-clock time ({unit})")):
                ax = axes[row, col]
                ax.set_xlabel(against)
                ax.set_ylabel(what)
                ax.grid(True, alpha=0.3)
            axes[row, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0, 0].legend(fontsize="small", title="pipeline stages")
        fig.suptitle(f"{self.experiment}: training by epoch, pipelined against not")
        fig.savefig(path, format="png")
        return path


def build_figure(experiment: str, tracking_uri: str | None = None, sweep_run_id: str | None = None) -> EpochFigure:
    """The runs of the latest sweep (or `sweep_run_id`) of `experiment`; without a sweep, all its runs."""
    uri = checked_uri(tracking_uri)
    client = MlflowClient(uri)
    exp = find_experiment(client, experiment, uri)
    notes: list[str] = []
    parent = sweep_parent(client, exp.experiment_id, experiment, sweep_run_id, notes)
    runs = trial_runs(client, exp.experiment_id, parent) if parent else search_runs(client, exp.experiment_id, "")
    if not runs:
        raise ReportError(f"experiment '{experiment}' has no runs in {uri}" + (f" under sweep run {parent}" if parent
                          else "") + ": run the sweep first (pgnet sweep --config figure6)")
    if not any(AP in r.data.metrics for r in runs):
        metrics = sorted({k for r in runs for k in r.data.metrics})
        raise ReportError(f"none of the {len(runs)} runs of '{experiment}' logged '{AP}' (metrics there: "
                          f"{', '.join(metrics) or 'none'}); wait for their first evaluations")
    skipped = [r.info.run_id for r in runs if AP not in r.data.metrics and LOSS not in r.data.metrics]
    if skipped:
        notes.append(f"Left out: {len(skipped)} run(s) that logged neither {AP} nor {LOSS} ({', '.join(skipped)}).")
    curves = [read_run(client, r) for r in runs if r.info.run_id not in skipped]
    curves.sort(key=lambda c: c.stages)  # stable: runs of one S stay in start order
    return EpochFigure(experiment, curves, notes)


def write_figure(figure: EpochFigure, out: str | Path) -> dict[str, Path]:
    """`out.md`, `out.csv` and `out.png` (`out` is a path stem; its folder is created)."""
    stem = Path(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png = figure.plot(stem.with_name(stem.name + ".png"))
    md = stem.with_name(stem.name + ".md")
    md.write_text(figure.to_markdown(png.name))
    return {"markdown": md, "csv": figure.to_csv(stem.with_name(stem.name + ".csv")), "plot": png}


def _run_label(run: RunCurves, runs: list[RunCurves]) -> str:
    """`S=2 (1f1b, 4 micro-batches)`, with the run's name when several runs share its S."""
    pipelined = f"{run.schedule}, {run.params.get('pipeline.microbatches', '?')} micro-batches"
    kind = {0: "single process", 1: "single worker"}.get(run.stages, pipelined)
    twins = sum(r.stages == run.stages for r in runs) > 1
    return f"S={run.stages} ({kind})" + (f" {run.name}" if twins else "")


def _running_mean(values: list[float]) -> list[float]:
    """Each step's loss as the mean of the last 5% of the run's steps: step losses of small batches are noisy."""
    window = max(1, len(values) // 20)
    sums = np.cumsum(np.insert(np.asarray(values, dtype=float), 0, 0.0))
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(window, i + 1) for i in range(len(values))]


def _time_unit(seconds: float) -> tuple[float, str]:
    return (1.0, "s") if seconds < 600 else (60.0, "min") if seconds < 36_000 else (3600.0, "h")


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
