"""`pgnet report --paper NAME`: a sweep's trials set beside a paper's table (`paper_table`), row for row.

The trials are read by `build_report` (report_mlflow); each printed row gets the best counted trial of its config.
A cell reads "measured / paper (measured − paper)" in %; the CSV keeps the three apart; the plot is `paper_plot`.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from pipelines.sweeps.paper_plot import plot_paper_report
from pipelines.sweeps.paper_table import PaperGroup, PaperRow, PaperTable, load_paper_table
from pipelines.sweeps.report_mlflow import build_report
from pipelines.sweeps.report_model import COUNTED_STATUSES, TrialResult, rank
from pipelines.sweeps.report_render import Report, format_percent, md_row, trial_label

NOT_RUN = "not run"
NOT_COUNTED = "not counted"
MINUS = "\u2212"  # the typographic minus of a difference


@dataclass
class PaperCell:
    """One printed row of the paper's table and the sweep's trials of its config."""

    group: PaperGroup
    row: PaperRow
    trials: list[TrialResult]  # every trial run of this config, counted or not
    best: TrialResult | None  # the best counted one; None: not run, or none counted

    @property
    def state(self) -> str:
        return "measured" if self.best else NOT_COUNTED if self.trials else NOT_RUN

    def measured(self, metric: str) -> float | None:
        """The best trial's value in % (None: not logged; NaN: COCOeval's -1, no ground truth in that range)."""
        value = None if self.best is None else self.best.values.get(metric)
        if value is None or math.isnan(value):
            return None
        return math.nan if value < 0 else 100.0 * value

    def paper(self, metric: str) -> float | None:
        found = self.row.values.get(metric)
        return None if found is None else found.value

    def diff(self, metric: str) -> float | None:
        measured, paper = self.measured(metric), self.paper(metric)
        if measured is None or paper is None or math.isnan(measured):
            return None
        return measured - paper


def build_paper_report(experiment: str, paper: str | Path = "table3", tracking_uri: str | None = None,
                       metric: str | None = None, sweep_run_id: str | None = None,
                       mode: str | None = None) -> PaperReport:
    """The sweep `experiment` beside the bundled table `paper` (or a table file); the arguments as `build_report`'s.
    Each row's trial is picked by `metric`, by default the table's first column (Table 3: `bbox/AP`)."""
    table = load_paper_table(paper)
    metric = metric or next(iter(table.columns))
    rows = table.keys  # a run logged before one of them existed is placed at the config's default (build_report)
    report = build_report(experiment, tracking_uri, metric, rows=rows,
                          columns=(*table.columns, *table.measured_only), sweep_run_id=sweep_run_id, mode=mode)
    return PaperReport(report, table)


class PaperReport:
    """A sweep's `Report` laid out as a paper's table: Markdown, CSV and a plot (what `write_report` writes)."""

    def __init__(self, report: Report, table: PaperTable):
        self.report, self.table = report, table
        self.metrics = (*table.columns, *table.measured_only)
        by_key: dict[tuple, list[TrialResult]] = {}
        for trial in report.trials:
            by_key.setdefault(table.key_of(trial.params), []).append(trial)
        self.cells: list[PaperCell] = []
        for group, row in table.rows:
            trials = by_key.pop(tuple(row.params[k] for k in table.keys), [])
            counted = [t for t in trials if t.counted]
            best = max(counted, key=lambda t: rank(t, report.metric, report.mode)) if counted else None
            self.cells.append(PaperCell(group, row, trials, best))
        self.outside = [t for trials in by_key.values() for t in trials]  # configs the paper has no row for
        self.notes = [*report.notes, *self._notes()]

    def _notes(self) -> list[str]:
        notes = []
        for cell in self.cells:
            for t in cell.trials:
                if not t.counted:
                    why = (f"no evaluation of `{self.report.metric}`" if t.status in COUNTED_STATUSES
                           else f"not {' or '.join(COUNTED_STATUSES)}")
                    notes.append(f"Not counted: trial {t.trial_id} of {cell.group.label} / {cell.row.label}, "
                                 f"{t.status} ({why}).")
        for t in self.outside:
            config = ", ".join(f"{k}={v or '—'}" for k, v in zip(self.table.keys, self.table.key_of(t.params)))
            notes.append(f"Not in {self.table.table}: trial {t.trial_id} ({config}, {t.status}).")
        return notes

    # ------------------------------------------------------------------ Markdown

    def header(self) -> list[str]:
        return [*self.table.headers, *[self.table.columns.get(m, m) for m in self.metrics], "best trial", "trials"]

    def table_markdown(self) -> str:
        """The paper's layout: its groups and rows in its order, each cell measured / paper (difference)."""
        lines = [md_row(self.header()), md_row(["---"] * len(self.header()))]
        previous = None
        for cell in self.cells:
            group = f"**{cell.group.shown}**" if cell.group is not previous else ""  # once per group, as printed
            previous = cell.group
            values = [cell_text(cell, m) for m in self.metrics]
            best = "—" if cell.best is None else trial_label(cell.best)
            lines.append(md_row([group, cell.row.shown, *values, best, trials_text(cell)]))
        return "\n".join(lines)

    def to_markdown(self) -> str:
        t, r = self.table, self.report
        measured = sum(c.best is not None for c in self.cells)
        parts = [
            f"# {r.experiment} beside {t.paper}, {t.table}",
            "",
            self.table_markdown(),
            "",
            f"Each cell: measured / paper (measured {MINUS} paper), in %. Measured: the trial with the "
            f"{'lowest' if r.mode == 'min' else 'highest'} `{r.metric}` among the counted trials of that row's "
            f"config, every value read at its best evaluation. Paper: {t.paper}, {t.table}"
            + (f" (\"{t.caption}\")" if t.caption else "") + (f", read from {t.where}" if t.where else "")
            + ". —: no value (the paper gives none, or it was not logged); n/a: COCOeval had no ground truth in "
            f"that size range. {measured} of {len(self.cells)} rows measured.",
        ]
        parts += [f"- {note}" for note in self.notes]
        parts += ["", "## Every trial", "", r.trials_markdown(), ""]
        return "\n".join(parts)

    # ------------------------------------------------------------------ CSV and plot

    def csv_header(self) -> list[str]:
        values = [f"{m} {part}" for m in self.metrics for part in ("measured (%)", "paper (%)", "diff (%)")]
        return ["group", "row", *self.table.keys, "state", *values, "best_trial_id", "best_run_id", "best_step",
                "trials", "paper_source"]

    def to_csv(self, path: str | Path) -> Path:
        """One line per printed row; measured, paper and difference in their own columns (in %, to 6 decimals;
        empty where there is no value, "n/a" for COCOeval's -1)."""
        path = Path(path)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.csv_header())
            for cell in self.cells:
                values = []
                for m in self.metrics:
                    values += [_csv(cell.measured(m)), _csv(cell.paper(m)), _csv(cell.diff(m))]
                best = cell.best
                writer.writerow([cell.group.label, cell.row.label, *(cell.row.params[k] for k in self.table.keys),
                                 cell.state, *values, best.trial_id if best else "", best.run_id if best else "",
                                 "" if best is None else best.step, len(cell.trials), row_source(cell.row)])
        return path

    def plot(self, path: str | Path) -> Path:
        return plot_paper_report(self, Path(path))


def cell_text(cell: PaperCell, metric: str) -> str:
    """`12.3 / 37.8 (−25.5)`; "not run" or "not counted" for a row without a counted trial."""
    if cell.best is None:
        return cell.state
    paper = cell.paper(metric)
    text = f"{format_percent(cell.best.values.get(metric))} / {'—' if paper is None else f'{paper:.1f}'}"
    diff = cell.diff(metric)
    return text if diff is None else f"{text} ({signed(diff)})"


def signed(diff: float) -> str:
    """+1.2, −0.3, +0.0 (one decimal, a typographic minus)."""
    text = f"{diff:+.1f}"
    return "+0.0" if text == "-0.0" else text.replace("-", MINUS)


def row_source(row: PaperRow) -> str:
    """"PGNet, Table 3, row 'ResNet50+FPN / syncGN'": where the row's numbers were printed."""
    source = next(iter(row.values.values())).source
    return f"{source.paper}, {source.table}, row '{source.row}'"


def trials_text(cell: PaperCell) -> str:
    counted = sum(t.counted for t in cell.trials)
    return str(len(cell.trials)) if counted == len(cell.trials) else f"{len(cell.trials)} ({counted} counted)"


def _csv(value: float | None) -> str:
    if value is None:
        return ""
    return "n/a" if math.isnan(value) else repr(round(value, 6))  # % of a fraction: no float noise in the diff
