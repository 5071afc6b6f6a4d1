"""`pgnet demo` (the README's main job): the embedded default, end to end, on one machine.

Synthetic data, a local Ray, the demo sweep (the paper's CFFM neck against Table 3's FPN, each a
2-stage pipeline), MLflow in ./mlflow.db; then the report table by key-point AP, a picture of the best
trial's people on validation images, the best trial's registered model, and the command that opens the
MLflow UI with the URL of the trials' table.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from pipelines.sweeps.report import build_report, write_report
from pipelines.sweeps.spec import load_sweep
from pipelines.sweeps.sweep import TRIALS_DIR, run_sweep, sweep_tracking_lines
from pipelines.tracking.artifacts import render_predictions_png

DEMO_SWEEP = "demo"
ROWS = ("model.neck",)
# People drawn from this score up: a three-epoch model scores the people it finds 0.1-0.35 and its
# spurious detections below 0.07.
PICTURE_SCORE = 0.1


def run_demo(storage: str = "runs/demo", fresh: bool = False, print_fn=print) -> int:
    start = time.perf_counter()
    sweep = load_sweep(DEMO_SWEEP)
    folder = Path(storage) / sweep.name
    if fresh and folder.exists():
        shutil.rmtree(folder)
    resume = folder.exists()  # a demo interrupted earlier picks up where it stopped
    grid = run_sweep(sweep, storage=storage, resume=resume)
    failed = [r for r in grid if r.error]
    experiment = sweep.overrides["tracking.experiment"]
    report = build_report(experiment, metric=sweep.metric, mode=sweep.mode, rows=ROWS)
    paths = write_report(report, Path(storage) / f"{sweep.name}_report")
    print_fn(report.to_markdown())
    print_fn("report files: " + ", ".join(str(p) for p in paths.values()))
    best = max((cell.best for cell in report.cells), key=lambda t: t.values.get(sweep.metric, -1.0), default=None)
    if best is not None:
        picture = render_predictions_png(folder / TRIALS_DIR / best.trial_id, Path(storage) / "demo_people.png",
                                         score_threshold=PICTURE_SCORE)
        if picture is not None:
            described = ", ".join(f"{k}={best.params.get(k)}" for k in ROWS)
            print_fn(f"people found by the best trial ({described}, {sweep.metric} "
                     f"{100 * best.values[sweep.metric]:.1f}), scored {PICTURE_SCORE} or more, on validation "
                     f"images: {picture}")
    print_fn(f"\nsweep of {len(grid)} trials ({len(failed)} failed) in {time.perf_counter() - start:.0f} s")
    for line in sweep_tracking_lines(sweep, storage):
        print_fn(line)
    return 1 if failed else 0
