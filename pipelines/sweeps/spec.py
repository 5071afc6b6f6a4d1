"""Sweep definitions (`tune_configs/*.yaml`): base config, search space, metric, scheduler, searcher.

Loaded into dataclasses and checked before anything starts: an unknown key, a
search-space key that is not a training-config key, or a value outside its
choices is an error naming the key and the file.

A search-space key is a training-config key (`model.norm: {grid: [gn, cbn]}`), or names a group of keys
set together, whose grid or choice values are mappings of config keys:
`arch: {grid: [{model.backbone: resnet50, model.neck: fpn}, {model.backbone: resnet50, model.neck: cffm}]}`
(the paper's Table 3 crosses only some backbones with some necks).
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pgnet.config import (
    Config,
    ConfigError,
    apply_overrides,
    build_dataclass,
    config_from_dict,
    resolve_config_path,
)
from pgnet.evaluation import metric_names
from pgnet.typed_yaml import flatten, read_yaml, resolve_bundled
from pipelines.training.ray_runtime import cpus_per_run

REGISTERED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,255}")
DOMAINS = ("grid", "choice", "uniform", "loguniform", "randint")
SCHEDULERS = ("none", "asha")
SEARCHERS = ("grid", "random", "optuna")


@dataclass
class SchedulerConfig:
    name: str = "none"  # none | asha
    grace_period: int = 1  # epochs every trial gets before ASHA may stop it
    reduction_factor: int = 2


@dataclass
class SearchConfig:
    name: str = "grid"  # grid | random (Tune's variant generator) | optuna (model-based, TPE)
    seed: int = 0


@dataclass
class SweepConfig:
    name: str
    base: str  # a training config: bundled name or a path relative to the sweep file
    search_space: dict[str, dict[str, Any]]
    overrides: dict[str, Any] = field(default_factory=dict)  # fixed for every trial
    metric: str = "keypoints/AP"
    mode: str = "max"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    num_samples: int = 1  # samples of the sampled dimensions (grid dimensions are crossed in full)
    max_concurrent_trials: int = 1
    register_model: str | None = None  # register the best trial's model in MLflow's Model Registry under this name
    source: str = field(default="", init=False)  # the file it came from (set by load_sweep)
    base_file_values: dict[str, Any] = field(default_factory=dict, init=False, repr=False)  # `base`, as read

    def base_values(self) -> dict[str, Any]:
        """The base training config as a nested dict, with the sweep's fixed overrides applied."""
        # every epoch is evaluated, so each report Tune sees carries the metric ASHA ranks by
        return apply_overrides(self.base_file_values, {**self.overrides, "train.eval_every": 1})

    def trial_config(self, params: dict[str, Any]) -> Config:
        flat = expand_params(params)
        return config_from_dict(apply_overrides(self.base_values(), flat), f"{self.source} (trial {flat})")

    def base_config(self) -> Config:
        """The config of the first trial: what every trial shares (data, tracking, resources)."""
        return self.trial_config(self.corner_params()[0])

    def largest_trial_config(self) -> Config:
        """The trial that asks Ray for the most CPUs (its Train workers): what a local Ray and the capacity
        check are sized for, since a sweep may vary pipeline.stages (each trial's workers follow its own)."""
        return max((self.trial_config(p) for p in self.corner_params()), key=cpus_per_run)  # ties: the first

    def param_space(self) -> dict[str, Any]:
        """The Tune search space, keyed by the flat config keys."""
        return {key: _domain(spec) for key, spec in self.search_space.items()}

    def grid_size(self) -> int:
        return math.prod(len(spec["grid"]) for spec in self.search_space.values() if "grid" in spec)

    def total_trials(self) -> int:
        return self.grid_size() * self.num_samples

    def corner_params(self) -> list[dict[str, Any]]:
        """A few concrete trials (every grid value, sampled dimensions at their first option) to validate."""
        keys = list(self.search_space)
        options = []
        for key in keys:
            spec = self.search_space[key]
            kind, value = next(iter(spec.items()))
            options.append(value if kind in ("grid", "choice") else [value[0]])
        return [dict(zip(keys, combo)) for combo in itertools.islice(itertools.product(*options), 200)]


def expand_params(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's params as config keys: a group's mapping (`arch: {model.backbone: ..., model.neck: ...}`)
    becomes its keys; the other params stay as they are."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        out.update(flatten(value) if isinstance(value, dict) else {key: value})
    return out


def _domain(spec: dict[str, Any]):
    # imported here: loading or dry-running a sweep (`pgnet sweep --dry-run`) must not pay for Ray
    from ray import tune
    kind, value = next(iter(spec.items()))
    if kind == "grid":
        return tune.grid_search(list(value))
    if kind == "choice":
        return tune.choice(list(value))
    low, high = value
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](low, high)


def _check_domain(key: str, spec: Any, source: str) -> None:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DOMAINS:
        raise ConfigError(f"{source}: search_space.{key} must be one of "
                          + ", ".join(f"{{{d}: ...}}" for d in DOMAINS) + f", got {spec!r}")
    kind, value = next(iter(spec.items()))
    if kind in ("grid", "choice"):
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{source}: search_space.{key}.{kind} must be a non-empty list")
        groups = [isinstance(v, dict) for v in value]
        if any(groups) and not (all(groups) and all(value)):
            raise ConfigError(f"{source}: search_space.{key}.{kind}: a group's values are all non-empty mappings "
                              f"of config keys ({{model.backbone: resnet50, model.neck: fpn}}), got {value!r}")
    elif not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
              and value[0] < value[1]):
        raise ConfigError(f"{source}: search_space.{key}.{kind} must be [low, high] with low < high, got {value!r}")
    elif kind == "loguniform" and value[0] <= 0:
        raise ConfigError(f"{source}: search_space.{key}.loguniform needs low > 0, got {value!r}")


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep file; bundled sweeps resolve by name (`smoke` -> tune_configs/smoke.yaml)."""
    file = resolve_sweep_path(path).absolute()  # trials run in other working directories
    source = str(file)
    raw = _read_sweep_file(file, source, seen=())
    for required in ("name", "base", "search_space"):
        if required not in raw:
            raise ConfigError(f"{source}: '{required}' is required")
    sweep = build_dataclass(SweepConfig, raw, source)
    sweep.source = source
    sweep.base = str(_base_path(sweep.base, file))
    sweep.base_file_values = read_yaml(Path(sweep.base), f"{source} (base {sweep.base})") or {}
    sweep.overrides.setdefault("tracking.experiment", sweep.name)  # one MLflow experiment per sweep
    _validate(sweep)
    return sweep


def _read_sweep_file(file: Path, source: str, seen: tuple[Path, ...]) -> dict[str, Any]:
    """A sweep file's mapping; with `extends: OTHER`, OTHER's (a bundled name or a path beside this file) with
    this file's keys on top: `overrides` and `search_space` are merged key by key, the rest replaced."""
    raw = read_yaml(file, source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a sweep file must be a YAML mapping, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    beside = file.parent / str(parent)
    parent_file = (beside if beside.is_file() else resolve_sweep_path(str(parent))).absolute()
    if parent_file in (file, *seen):
        raise ConfigError(f"{source}: 'extends: {parent}' makes a cycle of sweep files")
    merged = _read_sweep_file(parent_file, f"{parent_file} (extended by {source})", (*seen, file))
    if isinstance(merged.get("overrides"), dict):  # each sweep its own experiment, unless this file names one
        merged["overrides"].pop("tracking.experiment", None)
    for key, value in raw.items():
        if key in ("overrides", "search_space") and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _base_path(base: str, sweep_file: Path) -> Path:
    """The base config: next to the sweep file, else a path or bundled name (`cpu_small`); absolute."""
    beside = sweep_file.parent / base
    return (beside if beside.is_file() else resolve_config_path(base)).absolute()


# What every trial reports after each evaluation (the main ones first, for the error message).
REPORTED_METRICS = ("keypoints/AP", "bbox/AP", "loss",
                    *(m for m in metric_names() if m not in ("keypoints/AP", "bbox/AP")))


def _validate(sweep: SweepConfig) -> None:
    src = sweep.source
    if sweep.mode not in ("max", "min"):
        raise ConfigError(f"{src}: mode must be max or min, got {sweep.mode!r}")
    if sweep.scheduler.name not in SCHEDULERS:
        raise ConfigError(f"{src}: scheduler.name must be one of {', '.join(SCHEDULERS)}")
    if sweep.search.name not in SEARCHERS:
        raise ConfigError(f"{src}: search.name must be one of {', '.join(SEARCHERS)}")
    if not isinstance(sweep.search_space, dict) or not sweep.search_space:
        raise ConfigError(f"{src}: search_space must map config keys to domains")
    for key, spec in sweep.search_space.items():
        _check_domain(key, spec, src)
    if sweep.search.name == "optuna" and sweep.grid_size() > 1:
        raise ConfigError(f"{src}: optuna samples; write its dimensions as choice/uniform/loguniform, not grid")
    if sweep.num_samples < 1 or sweep.max_concurrent_trials < 1:
        raise ConfigError(f"{src}: num_samples and max_concurrent_trials must be >= 1")
    base = sweep.base_values()
    known = set(config_from_dict(base, f"{src} (base {sweep.base})").flat())
    for key, spec in sweep.search_space.items():
        values = next(iter(spec.values()))
        if isinstance(values, list) and isinstance(values[0], dict):  # a group: its mappings hold the keys
            unknown = sorted({k for v in values for k in flatten(v)} - known)
            if key in known or unknown:
                raise ConfigError(f"{src}: search_space.{key} sets keys together: name the group with a word "
                                  f"that is not a config key, and give its values as config keys"
                                  + (f" ({', '.join(unknown)} are not)" if unknown else ""))
        elif key not in known:
            raise ConfigError(f"{src}: search_space key '{key}' is not a training-config key")
    for params in sweep.corner_params():  # every grid value must make a valid training config
        if sweep.trial_config(params).pipeline.stages < 1:
            raise ConfigError(f"{src}: every trial trains on Ray Train, but trial {params} has pipeline.stages=0 "
                              "(the single-process trainer); set pipeline.stages: 1 or more under overrides")
    if sweep.register_model is not None and not REGISTERED_NAME.fullmatch(sweep.register_model):
        raise ConfigError(f"{src}: register_model must be a model name of letters, digits, '_', '-' and '.' "
                          f"(starting with a letter or digit), got {sweep.register_model!r}")
    if sweep.metric not in REPORTED_METRICS:
        raise ConfigError(f"{src}: metric {sweep.metric!r} is not reported by a trial; use one of "
                          f"{', '.join(REPORTED_METRICS)}")


# The bundled sweeps are the `tune_configs` package's data: found the same way in the source tree, an
# editable install and an installed wheel (a path relative to this file exists only in the source tree).
SWEEP_DIR = Path(str(resources.files("tune_configs")))


def resolve_sweep_path(path: str | Path) -> Path:
    """A sweep file path, or the name of a bundled sweep (`smoke`)."""
    return resolve_bundled(path, SWEEP_DIR, "sweep")

