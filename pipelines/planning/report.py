"""The planner's outputs: the best plans as a table, every plan as CSV and JSON rows, `--set` overrides."""
from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.planning.search import Evaluated

GIB = 2**30
COLUMNS = ("rank", "feasible", "stages", "data_parallel", "microbatches", "schedule", "virtual_stages", "devices",
           "balance", "images_per_s", "step_s", "pipeline_s", "allreduce_s", "norm_sync_s", "bubble", "peak_gib",
           "peak_gib_per_rank", "p2p_gb", "allreduce_gb", "reason")


def plan_row(rank: int, e: Evaluated) -> dict[str, Any]:
    p, r = e.plan, e.result
    row: dict[str, Any] = {
        "rank": rank, "feasible": e.feasible, "stages": p.stages, "data_parallel": p.data_parallel,
        "microbatches": p.microbatches, "schedule": p.schedule, "virtual_stages": p.virtual_stages,
        "devices": p.devices, "balance": list(p.balance), "images_per_s": e.images_per_s or None, "reason": e.reason}
    if r is not None:
        row.update(step_s=r.step_s, pipeline_s=r.pipeline_s, allreduce_s=r.allreduce_s, norm_sync_s=r.norm_sync_s,
                   bubble=r.bubble,
                   peak_gib=max(r.peak_bytes) / GIB, peak_gib_per_rank=[b / GIB for b in r.peak_bytes],
                   p2p_gb=r.p2p_bytes / 1e9, allreduce_gb=r.allreduce_bytes / 1e9)
    return {k: row.get(k) for k in COLUMNS}


def format_table(evaluated: Sequence[Evaluated], top: int) -> str:
    lines = [(f"{'#':>3} {'S':>3} {'D':>3} {'M':>3} {'schedule':<17} {'V':>2} {'dev':>4} {'images/s':>10} "
              f"{'step ms':>9} {'bubble':>7} {'allred ms':>9} {'sync ms':>8} {'peak GiB':>8} {'p2p GB':>7} "
              f"{'AR GB':>7}  balance")]
    for i, e in enumerate([e for e in evaluated if e.feasible][:top], start=1):
        p, r = e.plan, e.result
        lines.append(f"{i:>3} {p.stages:>3} {p.data_parallel:>3} {p.microbatches:>3} {p.schedule:<17} "
                     f"{p.virtual_stages:>2} {p.devices:>4} {e.images_per_s:>10.1f} {1e3 * r.step_s:>9.2f} "
                     f"{r.bubble:>7.1%} {1e3 * r.allreduce_s:>9.2f} {1e3 * r.norm_sync_s:>8.2f} "
                     f"{max(r.peak_bytes) / GIB:>8.2f} "
                     f"{r.p2p_bytes / 1e9:>7.3f} {r.allreduce_bytes / 1e9:>7.2f}  {list(p.balance)}")
    if len(lines) == 1:
        lines.append("    no feasible plan (see the reasons in --out's table)")
    return "\n".join(lines)


def write_tables(evaluated: Sequence[Evaluated], out: Path, meta: dict[str, Any]) -> tuple[Path, Path]:
    """`out/plans.csv` and `out/plans.json` (every plan, best first, with why the infeasible ones fail)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [plan_row(i, e) for i, e in enumerate(evaluated, start=1)]
    csv_path, json_path = out / "plans.csv", out / "plans.json"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    json_path.write_text(json.dumps({**meta, "plans": rows}, indent=1) + "\n")
    return csv_path, json_path
