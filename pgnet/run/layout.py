"""A run directory's files, named once: what every trainer writes and every reader finds.

    run_dir/
      config.yaml               the resolved config the run trained with
      metrics.jsonl             one record per optimiser step
      evaluations.jsonl         every COCO stat, one record per evaluation
      checkpoint_last.pt        single process: the resumable state; pipeline: the weights at the end
      checkpoint_best.pt        the weights of the best evaluation (`keypoints/AP`)
      val_predictions_best.json that evaluation's COCO results
      balance.json              pipeline runs: the measured stage cut
      workers/rank<r>.json      pipeline runs: which process and node hosts which stage
      pipeline_trace.json       pipeline runs with pipeline.trace: a Chrome trace of one step on every worker
      ray/                      pipeline runs: Ray Train's stage checkpoints (the resumable state)
      mlflow.json               tracked runs: its MLflow run, and what of the run has reached it
      summary.json              a sweep trial that trained to its end: its last report
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from pgnet.config import Config, config_from_dict, save_config
from pgnet.errors import MissingFileError, OutputExistsError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
EVALUATIONS_FILE = "evaluations.jsonl"
LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"
PREVIOUS_CHECKPOINT = "checkpoint_previous.pt"  # the last one before checkpoint_last.pt: a resume falls back to it
BEST_PREDICTIONS = "val_predictions_best.json"
BALANCE_FILE = "balance.json"
WORKERS_DIR = "workers"
PIPELINE_TRACE_FILE = "pipeline_trace.json"
STAGE_CHECKPOINTS_DIR = "ray"
MLFLOW_FILE = "mlflow.json"  # written by `pipelines.tracking.mirror`
SUMMARY_FILE = "summary.json"  # written by `pipelines.sweeps.sweep.run_trial`
BEST_METRIC = "keypoints/AP"  # what "best" means for checkpoint_best.pt


def _entry(name: str) -> property:
    """A `RunDir` attribute: the path of the run directory's entry `name`."""
    return property(lambda self: self.path / name, doc=f"run_dir/{name}")


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    config = _entry(CONFIG_FILE)
    metrics = _entry(METRICS_FILE)
    evaluations = _entry(EVALUATIONS_FILE)
    last_checkpoint = _entry(LAST_CHECKPOINT)
    best_checkpoint = _entry(BEST_CHECKPOINT)
    previous_checkpoint = _entry(PREVIOUS_CHECKPOINT)
    best_predictions = _entry(BEST_PREDICTIONS)
    balance = _entry(BALANCE_FILE)
    workers = _entry(WORKERS_DIR)
    pipeline_trace = _entry(PIPELINE_TRACE_FILE)
    stage_checkpoints = _entry(STAGE_CHECKPOINTS_DIR)
    mlflow = _entry(MLFLOW_FILE)
    summary = _entry(SUMMARY_FILE)

    def check_new(self) -> None:
        """A run starts only in a directory that holds no run (its step log), unless resumed."""
        if self.metrics.exists():
            raise OutputExistsError(f"{self.path} already holds a run; pass --resume to continue it or pick a new "
                                    "--run-dir")

    def check_resumable(self) -> None:
        """`--resume` of a single-process run needs its last checkpoint; said before any data is read."""
        if not (self.last_checkpoint.is_file() or self.previous_checkpoint.is_file()):
            raise MissingFileError(f"--resume: {self.path} has no {LAST_CHECKPOINT} to continue from; "
                                   "drop --resume to start a new run there")

    def write_config(self, cfg: Config) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config)
        return self.config

    def read_config(self) -> Config:
        if not self.config.is_file():
            raise MissingFileError(f"{self.path} has no {CONFIG_FILE}: it is not a run directory")
        return config_from_dict(yaml.safe_load(self.config.read_text()) or {}, str(self.config))
