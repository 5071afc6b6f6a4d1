"""`pgnet bench train`: a training recipe end to end, recorded: key-point AP by evaluation, wall time, speed.

The single-process trainer runs the config into a run directory; the record holds every evaluation,
the wall time from the start to the last checkpoint, the median step's images/s, and a picture of
the best evaluation's people drawn on validation images.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from pgnet.config import load_config
from pgnet.evaluation import format_metrics_table
from pgnet.run.layout import RunDir
from pgnet.run.metrics_log import read_jsonl
from pgnet.train import train
from pipelines.bench.record import PrintFn
from pipelines.tracking.artifacts import render_predictions_png

PICTURE = "val_predictions.png"  # in the run directory, and beside the record with --out


def run_train_benchmark(config: str, overrides: list[str], run_dir: Path, print_fn: PrintFn = print) -> dict[str, Any]:
    """Train `config` (+ `overrides`) in `run_dir`; returns its evaluations, time and speed."""
    cfg = load_config(config, overrides)
    start = time.perf_counter()
    summary = train(cfg, run_dir, progress=False)
    wall = time.perf_counter() - start
    files = RunDir(run_dir)
    speeds = [r["images_per_s"] for r in read_jsonl(files.metrics)]
    evaluations = [{k: r[k] for k in ("step", "epoch", "keypoints/AP", "keypoints/AP50", "keypoints/AP75",
                                      "bbox/AP") if k in r} for r in read_jsonl(files.evaluations)]
    picture = render_predictions_png(files.path, files.path / PICTURE)
    h, w = cfg.data.input_size
    print_fn(f"{config} {' '.join(overrides)}: {cfg.model.backbone} at {h}x{w}, {summary['step']} steps of batch "
             f"{cfg.train.batch_size}, {cfg.train.precision}")
    print_fn(format_metrics_table({k: v for k, v in summary.items() if k.startswith(("keypoints/", "bbox/"))}))
    print_fn("by evaluation (step: key-point AP): "
             + ", ".join(f"{e['step']}: {e['keypoints/AP']:.4f}" for e in evaluations))
    print_fn(f"wall time {wall / 60:.1f} min from the start to the last checkpoint (data generation included), "
             f"median step {statistics.median(speeds):.1f} images/s")
    return {"config": config, "overrides": overrides, "steps": summary["step"], "wall_seconds": wall,
            "median_images_per_s": statistics.median(speeds), "evaluations": evaluations,
            "final": {k: v for k, v in summary.items() if k.startswith(("keypoints/", "bbox/"))},
            "picture": str(picture) if picture else None}
