"""`pgnet bench pipeline`: pipeline-parallel throughput against one worker, measured in one run.

For S = 1 and S = 2, every schedule and M in {2, 4, 8}: images/s at steady
state, the speed-up over S = 1 with the same micro-batches (the median of the
S = 1 runs of every schedule, robust to one disturbed run), the ideal
S * M / (M + S - 1) (perfect split, only the pipeline bubble lost), the ratio
measured/ideal, the data-wait fraction and each stage's peak saved activations.
"""
from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pgnet.config import load_config
from pgnet.run.layout import RunDir
from pgnet.run.metrics_log import read_jsonl
from pipelines.bench.memory import ActivationMemoryProbe
from pipelines.training.launch import train_on_ray
from pipelines.training.ray_runtime import ensure_ray

WARMUP_STEPS = 2  # the first steps include shape inference and Ray Data start-up


@dataclass
class PipelineTiming:
    stages: int
    schedule: str
    microbatches: int
    images_per_s: float
    wait_fraction: float
    peak_mb: list[float]


def bench_overrides(input_size: int, batch: int, steps: int) -> list[str]:
    return [
        "model.backbone=resnet18", "model.norm=gn", f"data.input_size=[{input_size}, {input_size}]",
        f"data.synthetic.train_images={batch * (steps + 1)}", "data.synthetic.val_images=4",
        f"train.batch_size={batch}", "train.epochs=1", f"train.max_steps={steps}", "train.threads=1",
        "train.log_every=1000", "eval.max_images=4", "tracking.mlflow=false", "optim.warmup_steps=0",
    ]


def measure(stages: int, schedule: str, microbatches: int, overrides: list[str], root: Path) -> PipelineTiming:
    cfg = load_config(None, [*overrides, f"pipeline.stages={stages}", f"pipeline.schedule={schedule}",
                             f"pipeline.microbatches={microbatches}"])
    run_dir = root / f"s{stages}-{schedule}-m{microbatches}"
    summary = train_on_ray(cfg, run_dir, probes=(ActivationMemoryProbe(),))
    records = read_jsonl(RunDir(run_dir).metrics)[WARMUP_STEPS:]
    seconds = sum(cfg.train.batch_size / r["images_per_s"] for r in records)
    return PipelineTiming(stages, schedule, microbatches, len(records) * cfg.train.batch_size / seconds,
                          summary.get("data/wait_fraction", float("nan")),
                          [summary.get(f"memory/peak_activation_mb/stage{s}", float("nan")) for s in range(stages)])


def run_pipeline_benchmark(input_size: int = 128, batch: int = 32, steps: int = 8,
                           schedules: tuple[str, ...] = ("gpipe", "1f1b", "interleaved_1f1b"),
                           microbatches: tuple[int, ...] = (2, 4, 8), print_fn=print) -> list[dict]:
    overrides = bench_overrides(input_size, batch, steps)
    ensure_ray(load_config(None, [*overrides, "pipeline.stages=2"]))
    with tempfile.TemporaryDirectory() as tmp:
        timings = [measure(stages, schedule, m, overrides, Path(tmp))
                   for schedule in schedules for m in microbatches for stages in (1, 2)]
    rows, baselines = speedup_rows(timings)
    print_fn(f"PGNet resnet18, input {input_size}x{input_size}, batch {batch}, one thread per worker, "
             f"{steps - WARMUP_STEPS} timed steps after {WARMUP_STEPS} warm-up steps")
    print_fn("S=1 baseline per M: the median of the S=1 runs of every schedule (one worker computes the same "
             "whatever the schedule); " + "; ".join(f"M={m}: {b['median']:.2f} images/s (runs {b['low']:.2f}-"
                                                  f"{b['high']:.2f})" for m, b in baselines.items()))
    print_fn(f"{'S':>2} {'schedule':<17} {'M':>2} {'images/s':>9} {'vs S=1':>7} {'ideal':>6} {'of ideal':>8} "
             f"{'data wait':>9}  peak activations per stage (MB)")
    for r in rows:
        peaks = " ".join(f"{p:7.1f}" for p in r["peak_mb"])
        print_fn(f"{r['stages']:>2} {r['schedule']:<17} {r['microbatches']:>2} {r['images_per_s']:>9.2f} "
                 f"{r['speedup']:>6.2f}x {r['ideal']:>5.2f}x {r['of_ideal']:>8.2f} {r['wait']:>9.1%}  {peaks}")
    _print_verdicts(rows, print_fn)
    return rows


def speedup_rows(timings: list[PipelineTiming]) -> tuple[list[dict], dict[int, dict[str, float]]]:
    """Each run against one worker with the same micro-batches. The baseline per M is the median of the
    S=1 runs of all schedules, so that one disturbed run does not skew every ratio of its M."""
    single: dict[int, list[float]] = {}
    for t in timings:
        if t.stages == 1:
            single.setdefault(t.microbatches, []).append(t.images_per_s)
    baselines = {m: {"median": statistics.median(v), "low": min(v), "high": max(v)} for m, v in single.items()}
    rows = []
    for t in timings:
        if t.microbatches not in baselines:
            raise ValueError(f"no S=1 run with {t.microbatches} micro-batches to compare with")
        speedup = t.images_per_s / baselines[t.microbatches]["median"]
        ideal = t.stages * t.microbatches / (t.microbatches + t.stages - 1)
        rows.append({"stages": t.stages, "schedule": t.schedule, "microbatches": t.microbatches,
                     "images_per_s": t.images_per_s, "speedup": speedup, "ideal": ideal,
                     "of_ideal": speedup / ideal, "wait": t.wait_fraction, "peak_mb": t.peak_mb})
    return rows, baselines


def _print_verdicts(rows: list[dict], print_fn) -> None:
    pick = {(r["stages"], r["schedule"], r["microbatches"]): r for r in rows}
    best = pick.get((2, "1f1b", 8))
    if best:
        print_fn(f"S=2 1F1B M=8: {best['speedup']:.2f}x one worker (target >= 1.5x), "
                 f"{best['of_ideal']:.2f} of the bubble bound (target >= 0.85)")
    gpipe, one_f = pick.get((2, "gpipe", 8)), pick.get((2, "1f1b", 8))
    if gpipe and one_f:
        print_fn(f"peak activations at S=2, M=8, stage 0: 1F1B {one_f['peak_mb'][0]:.1f} MB vs GPipe "
                 f"{gpipe['peak_mb'][0]:.1f} MB (1F1B keeps at most S micro-batches in flight)")
