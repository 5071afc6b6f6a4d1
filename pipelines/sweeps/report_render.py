"""The report rendered: the Table 3 layout and every trial in Markdown, the table as CSV, a bar plot.

`Report` is `ReportModel` (the scored trials and cells) with these views; values are shown in %.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pgnet.evaluation.coco_eval import format_stat
from pipelines.sweeps.report_model import (
    ALSO_READ,
    COUNTED_STATUSES,
    ReportModel,
    TrialResult,
    rank,
)

STOPPED_MARK = "†"
LABELS = {"model.backbone": "Backbone", "model.neck": "Neck", "model.norm": "Norm", "loss.box": "Box loss"}
LOSS_KEY = "loss.box"
PLOT_LABELS = {"bbox/AP": "box AP", "keypoints/AP": "key-point AP"}


class Report(ReportModel):
    """A sweep's report: its scored trials and cells (`ReportModel`) as Markdown, CSV and a plot."""

    # ------------------------------------------------------------------ Markdown

    def table_markdown(self) -> str:
        """The Table 3 layout: one row per group, values in % with one decimal."""
        loss = LOSS_KEY not in self.rows
        others = [k for k in self.other_swept if k != LOSS_KEY]
        header = [_label(k) for k in self.rows] + [_column_label(c) for c in self.columns]
        header += (["best trial's loss"] if loss else []) + (["other swept params"] if others else [])
        header += ["best trial", "trials"]
        lines = [md_row(header), md_row(["---"] * len(header))]
        for cell in self.cells:
            best = cell.best
            row = list(cell.key) + [format_percent(best.values.get(c)) for c in self.columns]
            if loss:
                row.append(best.params.get(LOSS_KEY, "—"))
            if others:
                row.append(", ".join(f"{k}={best.params.get(k, '—')}" for k in others))
            row.append(trial_label(best))
            row.append(str(cell.trials) + (f" ({cell.stopped_early} stopped early)" if cell.stopped_early else ""))
            lines.append(md_row(row))
        return "\n".join(lines)

    def trials_markdown(self) -> str:
        """Every trial run: the params that vary across trials, its status and its best `metric`."""
        header = ["trial", *self.swept, "status", "best epoch", "step", _column_label(self.metric)]
        lines = [md_row(header), md_row(["---"] * len(header))]
        for t in sorted(self.trials, key=lambda t: rank(t, self.metric, self.mode), reverse=True):
            status = t.status + _uncounted_reason(t)
            epoch = "—" if t.epoch is None else f"{t.epoch:g}"
            lines.append(md_row([t.trial_id, *[t.params.get(k, "—") for k in self.swept], status, epoch,
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


def md_row(cells: Sequence[str]) -> str:
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


def trial_label(trial: TrialResult) -> str:
    epoch = "" if trial.epoch is None else f" (epoch {trial.epoch:g})"
    return f"{trial.trial_id}{epoch}{STOPPED_MARK if trial.stopped_early else ''}"


