"""`pgnet sweep --dry-run`: what a sweep would run (its trials, their resources, the base config).

Reads the sweep file only: no Ray is imported or started, so it answers in seconds on any machine.
"""
from __future__ import annotations

import itertools
from typing import Any

import yaml

from pgnet.config import Config
from pipelines.sweeps.spec import SweepConfig, expand_params
from pipelines.training.ray_runtime import (
    DRIVER_CPU,
    cpus_per_run,
    local_cpus,
    workers_per_run,
)

MAX_TRIAL_LINES = 200  # a larger sweep lists its first trials, then how many more it has


def describe_sweep(sweep: SweepConfig) -> str:
    """The sweep as text: name and file, one line per trial, resources, scheduler, searcher, base config."""
    base = sweep.base_config()
    total = sweep.total_trials()
    lines = [f"sweep {sweep.name} ({sweep.source})", f"base config: {sweep.base}",
             f"metric: {sweep.metric} ({sweep.mode})", "",
             f"trials: {total} ({_trial_count_terms(sweep)}), at most {sweep.max_concurrent_trials} at a time "
             "(max_concurrent_trials)"]
    lines += trial_lines(sweep)
    largest = sweep.largest_trial_config()
    if cpus_per_run(largest) != cpus_per_run(base):
        lines += ["", (f"trials differ in size (the first's workers take {cpus_per_run(base):g} CPUs, the largest's "
                       f"{cpus_per_run(largest):g}): below, the largest trial's resources, which Ray is sized for")]
    lines += ["", *resource_lines(largest, min(sweep.max_concurrent_trials, total)), "",
              f"scheduler: {_scheduler_text(sweep, base)}", f"searcher: {_searcher_text(sweep)}", "",
              "base config (every trial's, with the swept keys at their first value):",
              yaml.safe_dump(base.to_dict(), sort_keys=False).rstrip()]
    return "\n".join(lines)


def trial_lines(sweep: SweepConfig) -> list[str]:
    """One line per trial: grid values crossed in full, each grid point `num_samples` times; a sampled
    dimension shows its domain, since Tune (or the searcher) draws its value when the trial starts."""
    grid = {k: spec["grid"] for k, spec in sweep.search_space.items() if "grid" in spec}
    sampled = [f"{k} ~ {_domain_text(spec)}" for k, spec in sweep.search_space.items() if "grid" not in spec]
    total = sweep.total_trials()
    width = len(str(total))
    points = itertools.product(range(sweep.num_samples), itertools.product(*grid.values()))
    lines = []
    for n, (sample, values) in enumerate(itertools.islice(points, MAX_TRIAL_LINES), start=1):
        parts = [f"{k}={_value_text(v)}" for k, v in expand_params(dict(zip(grid, values))).items()] + sampled
        repeat = f"  (sample {sample + 1} of {sweep.num_samples})" if sweep.num_samples > 1 else ""
        lines.append(f"  {n:>{width}}. {', '.join(parts)}{repeat}")
    if total > MAX_TRIAL_LINES:
        lines.append(f"  ... and {total - MAX_TRIAL_LINES} more")
    return lines


def resource_lines(base: Config, concurrent: int) -> list[str]:
    """What one trial asks of Ray (its Train workers and its driver) and what `concurrent` trials need."""
    workers = workers_per_run(base)
    gpus = f"{workers} GPUs (one per worker)" if base.ray.use_gpu else "no GPU (ray.use_gpu: false)"
    per_trial = cpus_per_run(base) + DRIVER_CPU
    # where the CPUs come from: a joined cluster as it is, a local Ray sized for the runs and Ray Data
    where = (f"joins the Ray cluster at {base.ray.address}" if base.ray.address else
             f"a local Ray (no ray.address, no RAY_ADDRESS) starts with {local_cpus(base, concurrent)} logical CPUs")
    return [
        f"resources per trial: {workers} Ray Train workers (pipeline.stages {max(1, base.pipeline.stages)} x "
        f"pipeline.data_parallel {base.pipeline.data_parallel}), {base.ray.cpus_per_worker:g} CPU each "
        f"(ray.cpus_per_worker), {gpus}",
        f"  = {cpus_per_run(base):g} CPUs for the workers + {DRIVER_CPU:g} for the trial's driver = {per_trial:g} CPUs",
        f"{concurrent} concurrent trials need {concurrent * per_trial:g} CPUs, plus {base.ray.data_cpus:g} per "
        f"Ray Data task (ray.data_cpus); {where}",
    ]


def _trial_count_terms(sweep: SweepConfig) -> str:
    grid = [f"{len(spec['grid'])} {k}" for k, spec in sweep.search_space.items() if "grid" in spec]
    return " x ".join(grid + [f"num_samples {sweep.num_samples}"])


def _domain_text(spec: dict[str, Any]) -> str:
    """`loguniform(0.0001, 0.01)`, `choice(giou, diou)`: the domain as the sweep file gives it."""
    kind, value = next(iter(spec.items()))
    return f"{kind}({', '.join(_value_text(v) for v in value)})"


def _value_text(value: Any) -> str:
    """A value as YAML writes it (`true`, `[96, 96]`), so a line reads like the sweep file."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _scheduler_text(sweep: SweepConfig, base: Config) -> str:
    s = sweep.scheduler
    if s.name == "asha":
        return (f"asha (time attribute epoch, max_t {max(1, base.train.epochs)} = train.epochs, "
                f"grace_period {s.grace_period}, reduction_factor {s.reduction_factor})")
    return f"none (every trial runs its train.epochs: {base.train.epochs})"


def _searcher_text(sweep: SweepConfig) -> str:
    name, seed = sweep.search.name, sweep.search.seed
    return {"grid": "grid (Tune's variant generator: grid values in full, sampled ones drawn at random)",
            "random": f"random (Tune's variant generator, seed {seed})",
            "optuna": f"optuna (TPE, seed {seed}): picks each trial's values from the earlier trials' results",
            }[name]
