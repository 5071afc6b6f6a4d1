"""`pgnet report`: a sweep's results as the paper's Table 3 (backbone x norm), read only from MLflow.

The entry module: reading trials (report_mlflow), cells and ranking (report_model), Markdown/CSV/plot (report_render).
"""
from __future__ import annotations

from pathlib import Path

from pipelines.sweeps.report_mlflow import ReportError, build_report
from pipelines.sweeps.report_model import (
    TABLE3_COLUMNS,
    TABLE3_ROWS,
    Cell,
    TrialResult,
    default_mode,
)
from pipelines.sweeps.report_render import Report, format_metric, format_percent

__all__ = ["Cell", "Report", "ReportError", "TABLE3_COLUMNS", "TABLE3_ROWS", "TrialResult", "build_report",
           "default_mode", "format_metric", "format_percent", "write_report"]


def write_report(report: Report, out: str | Path) -> dict[str, Path]:
    """`out.md`, `out.csv` and `out.png` (`out` is a path stem; its folder is created)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("") if out.suffix in (".md", ".csv", ".png") else out
    md = stem.with_name(stem.name + ".md")
    md.write_text(report.to_markdown())
    return {"markdown": md, "csv": report.to_csv(stem.with_name(stem.name + ".csv")),
            "plot": report.plot(stem.with_name(stem.name + ".png"))}

