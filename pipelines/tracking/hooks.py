"""Streaming a training run into MLflow: trainer hooks, and the context that opens and closes its run.

A run starts with its data sets as MLflow dataset inputs (`pipelines.tracking.datasets`) and always
ends FINISHED, FAILED or KILLED, never left RUNNING; at its end its files and plots are uploaded and
its best checkpoint logged as an MLflow model (`pipelines.tracking.artifacts`).
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Iterator

from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from pgnet.config import Config
from pipelines.tracking.artifacts import log_run_artifacts
from pipelines.tracking.datasets import log_datasets
from pipelines.tracking.runs import RUN_DIR_TAG, reopen_run, start_run, tracking_uri
from pipelines.tracking.target import TrackingTarget

log = logging.getLogger("pgnet.tracking")

MLFLOW_BATCH = 1000  # metrics per log_batch call: MLflow's limit


class MlflowHooks:
    """Trainer hooks (`pgnet.run.training_run.TrainHooks`) that stream a run into MLflow: step records
    are sent every `flush_every` steps, evaluations and epoch ends at once."""

    def __init__(self, client: MlflowClient, run_id: str, flush_every: int = 20):
        self.client, self.run_id = client, run_id
        self.flush_every = flush_every
        self.pending: list[Metric] = []
        self.steps_pending = 0

    @classmethod
    def from_target(cls, target: TrackingTarget) -> "MlflowHooks":
        return cls(MlflowClient(target.uri), target.run_id)

    @property
    def target(self) -> TrackingTarget:
        return TrackingTarget(self.client.tracking_uri, self.run_id)

    def _metrics(self, record: dict[str, Any], skip: tuple[str, ...]) -> list[Metric]:
        now = int(time.time() * 1000)
        step = int(record.get("step", 0))
        return [Metric(metric_key(k), float(v), now, step) for k, v in record.items()
                if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)]

    def on_step(self, record: dict[str, Any]) -> None:
        self.pending.extend(self._metrics(record, skip=("step",)))
        self.steps_pending += 1
        if self.steps_pending >= self.flush_every:
            self.flush()

    def on_eval(self, record: dict[str, Any]) -> None:
        self.pending.extend(self._metrics(record, skip=("step",)))
        self.flush()

    def on_epoch_end(self, epoch: int) -> None:
        self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=self.pending[i:i + MLFLOW_BATCH])
        self.pending, self.steps_pending = [], 0

    def finish(self, run_dir: Path, status: str) -> None:
        """Flush, upload the run's files and artifacts, and close the run with `status`."""
        try:
            self.flush()
            log_run_artifacts(self.client, self.run_id, Path(run_dir))
        finally:
            self.client.set_terminated(self.run_id, status)


def metric_key(name: str) -> str:
    """MLflow keys allow letters, digits, _ - . / and spaces: keep ours (`keypoints/AP`) as they are."""
    return name.replace("@", "_at_")


@contextlib.contextmanager
def tracking_hooks(cfg: Config, run_dir: str | Path, enabled: bool = True, parent_run_id: str | None = None,
                   resume: bool = False, progress: bool = True) -> Iterator[list]:
    """Trainer hooks for one MLflow run around a `pgnet train` (with `resume`, the run dir's own run,
    reopened); a new run logs its data sets first (`progress`: while the synthetic set is written, if it
    is missing); the run is closed whatever happens."""
    if not (enabled and cfg.tracking.mlflow):
        yield []
        return
    client = MlflowClient(tracking_uri(cfg.tracking.tracking_uri))
    where = str(Path(run_dir).absolute())
    run_id = reopen_run(client, cfg, where) if resume else None
    new_run = run_id is None
    if new_run:
        run_id = start_run(client, cfg, run_name=cfg.tracking.run_name or Path(run_dir).name,
                           parent_run_id=parent_run_id, extra_tags={RUN_DIR_TAG: where})
        log.info("MLflow run %s in %s", run_id, client.tracking_uri)
    else:
        log.info("MLflow run %s in %s, reopened: the resumed run goes on in it", run_id, client.tracking_uri)
    hooks = MlflowHooks(client, run_id)
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        if new_run:
            log_datasets(client, run_id, cfg, progress=progress)
        yield [hooks]
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        hooks.finish(Path(run_dir), status)
