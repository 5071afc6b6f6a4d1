"""`pgnet bench pipeline`: pipeline-parallel step time against one worker, measured so that it holds on a
noisy machine.

- Every configuration (S, schedule, V) trains the same network on the same batches, encoded once by the
  driver and cycled by the first stage (`train_on_ray(preencoded_batches=...)`): no Ray Data, so the
  step time is the pipeline's alone.
- Configurations run in rounds, `repeats` of them. Each round runs S=1 first, then the others in an order
  rotated by one per round, so that S=1 and S>1 alternate and every configuration samples the run's drift
  alike.
- A run's step time is the median of its timed steps (after the warm-up steps); a configuration's, the median
  of its runs, with the spread (max - min) / median.
- Speed-up: the S=1 median over the configuration's median. Bubble bound: S x M / (M + S - 1), 1F1B's with a
  perfect cut and free communication.
- One more run (S=2, 1F1B) reads Ray Data, to report the data wait apart.
- The unit costs are measured in the same run (one thread, the bench's micro-batch), every configuration is
  cut by them, and the planner's simulator predicts each one (`pgnet plan --validate` reads the record),
  with this machine's concurrent speed measured in the same run too (`contention.py`).
"""
from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgnet.config import Config, load_config
from pgnet.errors import ConfigError, TrainingError
from pgnet.registry import PIPELINE_SCHEDULES
from pgnet.run.layout import RunDir
from pgnet.run.metrics_log import read_jsonl
from pipelines.bench.contention import concurrent_speed
from pipelines.bench.pipeline_report import print_report
from pipelines.planning.costs import CostTable, table_to_json
from pipelines.planning.measure import measure_cost_table
from pipelines.training.balance import partition
from pipelines.training.launch import train_on_ray
from pipelines.training.ray_runtime import ensure_ray
from pipelines.training.schedules import virtual_stages

WARMUP_STEPS = 2  # the first steps include shape inference, oneDNN's first kernels and the workers' start
PREENCODED = 4  # distinct batches the first stage cycles (the synthetic set holds one per step)


@dataclass(frozen=True)
class Variant:
    """One measured configuration."""
    stages: int
    schedule: str
    virtual_stages: int = 1

    @property
    def label(self) -> str:
        v = f" V={self.virtual_stages}" if self.virtual_stages > 1 else ""
        return f"S={self.stages} {self.schedule}{v}"


def parse_variant(text: str) -> Variant:
    """`S:SCHEDULE[:V]` (`2:zbv:2`); a ConfigError that shows the form otherwise."""
    stages, _, rest = text.partition(":")
    name, _, virtual = rest.rpartition(":")
    if not virtual.isdigit():  # no V given (a `csv:PATH` schedule keeps its colon)
        name, virtual = rest, "1"
    if not stages.isdigit() or not name:
        raise ConfigError(f"--variants {text!r}: write STAGES:SCHEDULE or STAGES:SCHEDULE:VIRTUAL_STAGES, "
                          "e.g. 2:1f1b or 2:interleaved_zb:2")
    variant = Variant(int(stages), name, int(virtual))
    if variant.stages < 1:
        raise ConfigError(f"--variants {text!r}: stages must be at least 1")
    PIPELINE_SCHEDULES.get(variant.schedule)  # an unknown name: a ConfigError listing the known ones
    return variant


BASELINE = Variant(1, "1f1b")
# 1F1B, the interleaved and the zero-bubble schedules at S=2; 1F1B and the zero-bubble ones again at S=3
# (three one-thread workers on this 2-core machine share two cores: compare them with each other).
DEFAULT_VARIANTS = (BASELINE, Variant(2, "1f1b"), Variant(2, "interleaved_1f1b", 2), Variant(2, "interleaved_zb", 2),
                    Variant(2, "zbv", 2), Variant(2, "dualpipev", 2), Variant(3, "1f1b"),
                    Variant(3, "interleaved_zb", 2), Variant(3, "zbv", 2))


@dataclass(frozen=True)
class BenchSettings:
    input_size: int = 128
    batch: int = 32
    microbatches: int = 8
    steps: int = 7  # per run, WARMUP_STEPS of them untimed
    repeats: int = 3
    threads: int = 1  # torch threads per worker

    def __post_init__(self):
        if self.steps <= WARMUP_STEPS:
            raise ConfigError(f"--steps {self.steps}: the first {WARMUP_STEPS} steps of a run are warm-up; give more")
        if self.repeats < 1 or self.microbatches < 1 or self.batch % self.microbatches:
            raise ConfigError(f"--repeats {self.repeats}, --batch {self.batch}, --microbatches {self.microbatches}: "
                              "at least one repeat, and a batch that the micro-batches divide")

    def overrides(self) -> list[str]:
        return ["model.backbone=resnet18", "model.norm=gn", f"data.input_size=[{self.input_size}, {self.input_size}]",
                f"data.synthetic.train_images={self.batch * self.steps}", "data.synthetic.val_images=4",
                f"train.batch_size={self.batch}", "train.epochs=1", f"train.max_steps={self.steps}",
                f"train.threads={self.threads}", "train.log_every=1000", "eval.max_images=4",
                "tracking.mlflow=false", "optim.warmup_steps=0", f"pipeline.microbatches={self.microbatches}"]


def variant_balance(variant: Variant, costs: CostTable) -> list[int]:
    """The cut of every run of `variant`: by the bench's own cost table (what the simulator is given too)."""
    return partition([u.seconds for u in costs.units],
                     variant.stages * virtual_stages(variant.schedule, variant.virtual_stages))


def variant_keys(variant: Variant) -> list[str]:
    return [f"pipeline.stages={variant.stages}", f"pipeline.schedule={variant.schedule}",
            f"pipeline.virtual_stages={variant.virtual_stages}"]


def variant_config(settings: BenchSettings, variant: Variant, costs: CostTable) -> Config:
    balance = ",".join(map(str, variant_balance(variant, costs)))
    return load_config(None, [*settings.overrides(), *variant_keys(variant), f"pipeline.balance=[{balance}]"])


def timed_run(cfg: Config, run_dir: Path, preencoded: bool) -> dict[str, Any]:
    """One training run: the median seconds of its timed steps, the median fraction of them spent waiting for the
    batch, and the epoch's wait fraction (start-up included)."""
    summary = train_on_ray(cfg, run_dir, preencoded_batches=min(PREENCODED, cfg.train.max_steps) if preencoded else 0)
    records = read_jsonl(RunDir(run_dir).metrics)[WARMUP_STEPS:]
    if not records:  # the run ended early (its log says why)
        raise TrainingError(f"{run_dir}: no step after the {WARMUP_STEPS} warm-up steps; see the run's log above")
    seconds = [cfg.train.batch_size / r["images_per_s"] for r in records]
    return {"step_s": statistics.median(seconds), "steps_s": seconds,
            "wait_fraction": statistics.median(r["data/wait_s"] / s for r, s in zip(records, seconds)),
            "epoch_wait_fraction": summary.get("data/wait_fraction", float("nan"))}


def run_order(variants: tuple[Variant, ...], round_index: int) -> list[Variant]:
    """S=1 first, then the others rotated by `round_index`."""
    others = [v for v in variants if v != BASELINE]
    shift = round_index % len(others) if others else 0
    return [BASELINE, *others[shift:], *others[:shift]]


def run_pipeline_benchmark(settings: BenchSettings = BenchSettings(), variants: tuple[Variant, ...] = DEFAULT_VARIANTS,
                           print_fn=print) -> dict[str, Any]:
    if BASELINE not in variants:
        variants = (BASELINE, *variants)
    base_cfg = load_config(None, settings.overrides())
    for variant in variants:  # a configuration a schedule refuses: said now, not after minutes of runs
        load_config(None, [*settings.overrides(), *variant_keys(variant)])
    ensure_ray(load_config(None, [*settings.overrides(), f"pipeline.stages={max(v.stages for v in variants)}"]))
    microbatch = settings.batch // settings.microbatches
    print_fn(f"measuring the unit costs (micro-batch {microbatch}, {settings.threads} thread)")
    costs = measure_cost_table(base_cfg, microbatch, progress=False)
    contention = concurrent_speed(base_cfg, microbatch)
    print_fn(f"one worker's step alone {contention['solo_s']:.3f} s, beside another {contention['concurrent_s']:.3f} s: "
             f"concurrent speed {contention['speed']:.2f}")
    runs: dict[Variant, list[dict[str, Any]]] = {v: [] for v in variants}
    total = settings.repeats * len(variants)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(settings.repeats):
            for variant in run_order(variants, r):
                n = sum(map(len, runs.values())) + 1
                run = timed_run(variant_config(settings, variant, costs), Path(tmp) / f"{n:03d}", preencoded=True)
                runs[variant].append(run)
                print_fn(f"[{n}/{total}] round {r + 1}: {variant.label}: {run['step_s']:.3f} s/step "
                         f"(data wait {run['wait_fraction']:.1%})")
        fed = Variant(2, "1f1b")
        ray_data = timed_run(variant_config(settings, fed, costs), Path(tmp) / "ray-data", preencoded=False)
    rows = result_rows(settings, runs, costs)
    feed = {"variant": fed.label, "step_s": ray_data["step_s"], "wait_fraction": ray_data["wait_fraction"],
            "epoch_wait_fraction": ray_data["epoch_wait_fraction"],
            "preencoded_step_s": next((r["step_s"] for r in rows if r["label"] == fed.label), None)}
    record = {"settings": {**settings.__dict__, "warmup_steps": WARMUP_STEPS, "concurrent_speed": contention["speed"]},
              "contention": contention, "unit_costs": table_to_json(costs),
              "results": rows, "ray_data_feed": feed}
    record["validation"] = print_report(record, print_fn)
    return record


def result_rows(settings: BenchSettings, runs: dict[Variant, list[dict[str, Any]]], costs: CostTable
                ) -> list[dict[str, Any]]:
    base = statistics.median(run["step_s"] for run in runs[BASELINE])
    M = settings.microbatches
    rows = []
    for variant, measured in runs.items():
        times = [run["step_s"] for run in measured]
        step = statistics.median(times)
        S = variant.stages
        bound = S * M / (M + S - 1)
        rows.append({"label": variant.label, "stages": S, "schedule": variant.schedule,
                     "virtual_stages": virtual_stages(variant.schedule, variant.virtual_stages), "microbatches": M,
                     "balance": variant_balance(variant, costs),
                     "step_s": step, "step_s_spread": (max(times) - min(times)) / step, "runs_step_s": times,
                     "images_per_s": settings.batch / step, "speedup": base / step, "bubble_bound": bound,
                     "of_bound": base / step / bound,
                     "wait_fraction": statistics.median(run["wait_fraction"] for run in measured)})
    return rows
