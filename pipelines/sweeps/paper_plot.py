"""The plot of `pgnet report --paper`: measured against the paper's value of its first column, per printed row.

Grouped bars, the paper's groups side by side; a row the sweep did not measure says so where its bar would be.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from pipelines.sweeps.paper_report import PaperReport

GROUP_GAP = 0.6  # extra space between the paper's groups, in bar slots


def plot_paper_report(report: PaperReport, path: Path) -> Path:
    """Bars of measured and paper values (%) of the table's first column (bbox AP for Table 3), as a PNG."""
    metric = next(iter(report.table.columns))
    cells = report.cells
    xs, x, previous = [], 0.0, None
    for cell in cells:
        if previous is not None and cell.group is not previous:
            x += GROUP_GAP
        xs.append(x)
        x, previous = x + 1.0, cell.group
    fig = Figure(figsize=(max(7.0, 0.9 * len(cells) + 2.5), 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.38
    measured = [cell.measured(metric) for cell in cells]
    paper = [cell.paper(metric) for cell in cells]
    for offset, heights, label, is_measured in ((-width / 2, measured, f"measured ({report.report.experiment})", True),
                                                (width / 2, paper, f"paper ({report.table.table})", False)):
        bars = ax.bar([x + offset for x in xs], [_height(h) for h in heights], width, label=label)
        texts = [cell.state if is_measured and cell.best is None else _value_text(h) for cell, h in zip(cells, heights)]
        ax.bar_label(bars, labels=texts, fontsize="x-small", rotation=90 if len(cells) > 12 else 0)
    ax.set_xticks(xs, [cell.row.shown.replace(" (", "\n(") for cell in cells], fontsize="x-small")
    for group in report.table.groups:  # the group's label centred under its rows
        centre = sum(x for x, cell in zip(xs, cells) if cell.group is group) / len(group.rows)
        ax.annotate(group.shown, xy=(centre, 0), xycoords=("data", "axes fraction"), xytext=(0, -30),
                    textcoords="offset points", ha="center", va="top", fontsize="small", fontweight="bold")
    column = report.table.columns[metric]
    ax.set_ylabel(f"{column} (%)")
    ax.set_title(f"{report.report.experiment} beside {report.table.paper}, {report.table.table}: {column}")
    ax.set_ylim(0, 1.2 * max([_height(h) for h in measured + paper] + [1.0]))  # room for the labels
    ax.legend(fontsize="small", loc="upper left")
    ax.grid(True, axis="y", alpha=0.3)
    fig.savefig(path, format="png")
    return path


def _height(value: float | None) -> float:
    return 0.0 if value is None or math.isnan(value) else value


def _value_text(value: float | None) -> str:
    if value is None:
        return "—"
    return "n/a" if math.isnan(value) else f"{value:.1f}"
