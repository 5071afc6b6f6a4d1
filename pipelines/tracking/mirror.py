"""Sending a run directory to its MLflow run: only what is missing, in order, each part noted in the ledger.

The trainers write `metrics.jsonl`, `evaluations.jsonl`, checkpoints and plots into the run directory and
never call MLflow themselves. `RunMirror.sync` creates the MLflow run if it does not exist yet, logs the
data sets, the step and evaluation records past the ledger's cursors and, once the run has ended, its
files, plots and best model, then its status. Whoever calls it (the run's background sender, the sweep
driver, `pgnet mlflow sync`) continues where the last one stopped; a failed call leaves the ledger at
the last part that arrived, so nothing is sent twice.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import DatasetInput, Metric
from mlflow.tracking import MlflowClient

from pgnet.config import Config
from pgnet.errors import MissingFileError
from pgnet.run.layout import RunDir
from pipelines.tracking.artifacts import log_run_artifacts
from pipelines.tracking.datasets import dataset_inputs
from pipelines.tracking.ledger import Ledger, read_ledger, write_ledger
from pipelines.tracking.runs import RUN_DIR_TAG, find_tagged_run, note_resumed, start_run

log = logging.getLogger("pgnet.tracking")

MLFLOW_BATCH = 1000  # metrics per log_batch call: MLflow's limit
# MLflow's own HTTP retries (7, doubling from 2 s, 120 s timeout: minutes per call) would outlast the run's
# retry budget (`tracking.retry_seconds`); the mirror retries itself, so each call gives up quickly.
# Set only where the user has not set them.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def bound_http_retries() -> None:
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


@dataclass
class SyncReport:
    created: bool = False  # the MLflow run was created by this sync
    steps: int = 0  # step records sent
    evaluations: int = 0
    ended: bool = False  # files, plots, model and status sent


def metric_key(name: str) -> str:
    """MLflow keys allow letters, digits, _ - . / and spaces: keep ours (`keypoints/AP`) as they are."""
    return name.replace("@", "_at_")


def record_metrics(record: dict[str, Any]) -> list[Metric]:
    """The numbers of one step or evaluation record as MLflow metrics at its step, stamped with the record's
    `time`. The same record always gives the same metrics: a batch that arrived although its call timed out
    is not stored twice when sent again (MLflow's SQL stores skip identical metrics)."""
    step = int(record.get("step", 0))
    stamp = int(float(record.get("time") or time.time()) * 1000)
    return [Metric(metric_key(k), float(v), stamp, step) for k, v in record.items()
            if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)]


class JsonlTail:
    """The complete lines appended to a JSON-lines file since the last read; from the start again when the
    file was replaced (a resumed run rewrites its log without the records it redoes)."""

    def __init__(self, path: Path):
        self.path, self.inode, self.offset = path, None, 0
        self.restarted = False  # the last read started the file over

    def new_records(self) -> list[dict[str, Any]]:
        self.restarted = False
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        if stat.st_ino != self.inode or stat.st_size < self.offset:
            self.restarted = self.inode is not None
            self.inode, self.offset = stat.st_ino, 0
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]  # a line being written is read next time
        self.offset += len(complete)
        return [json.loads(line) for line in complete.decode().splitlines() if line.strip()]


class RunMirror:
    """Keeps the MLflow run of `run_dir` up to date with it. `cfg` and `datasets` are the run's (read from the
    run directory when not given)."""

    def __init__(self, run_dir: str | Path, ledger: Ledger, cfg: Config | None = None,
                 datasets: list[DatasetInput] | None = None):
        bound_http_retries()
        self.run_dir = RunDir(Path(run_dir).absolute())
        self.ledger, self._cfg, self._datasets = ledger, cfg, datasets
        self.client = MlflowClient(ledger.uri)
        self.tails = {"metrics_step": JsonlTail(self.run_dir.metrics),
                      "evaluations_step": JsonlTail(self.run_dir.evaluations)}
        self.backlog: dict[str, list[dict[str, Any]]] = {name: [] for name in self.tails}  # read, not yet sent

    @classmethod
    def of(cls, run_dir: str | Path) -> "RunMirror":
        """The mirror of an existing tracked run directory (its `mlflow.json`)."""
        ledger = read_ledger(run_dir)
        if ledger is None:
            raise MissingFileError(f"{run_dir} has no {RunDir(run_dir).mlflow.name}: it is not a run directory, or "
                                   "its run was not tracked in MLflow (tracking.mlflow=false or --no-mlflow)")
        return cls(run_dir, ledger)

    @property
    def cfg(self) -> Config:
        if self._cfg is None:
            self._cfg = self.run_dir.read_config()
        return self._cfg

    def save(self) -> None:
        write_ledger(self.run_dir.path, self.ledger)

    def end(self, status: str) -> None:
        """Note the run's end; its files and status go to MLflow with the next `sync(final=True)`."""
        self.ledger.status = status
        self.save()

    def sync(self, final: bool = False) -> SyncReport:
        """Send what MLflow lacks; with `final` (an ended run), also the files, model and status. Raises
        whatever the MLflow client raises (an unreachable server) after noting what did arrive."""
        report = SyncReport()
        report.created = self._ensure_run()
        if not self.ledger.datasets:
            if self._datasets is None:
                self._datasets = dataset_inputs(self.cfg)
            self.client.log_inputs(self.ledger.run_id, datasets=self._datasets)
            self.ledger.datasets = True
            self.save()
        report.steps = self._send_records("metrics_step")
        report.evaluations = self._send_records("evaluations_step")
        if final and self.ledger.status:
            if not self.ledger.artifacts:
                log_run_artifacts(self.client, self.ledger.run_id, self.run_dir.path)
                self.ledger.artifacts = True
                self.save()
            if not self.ledger.closed:
                self.client.set_terminated(self.ledger.run_id, self.ledger.status)
                self.ledger.closed = True
                self.save()
            report.ended = True
        return report

    def _ensure_run(self) -> bool:
        """Create the MLflow run (or find a resumed run's); a resumed run is set RUNNING again. True if created."""
        ledger, created = self.ledger, False
        where = str(self.run_dir.path)
        if ledger.run_id is None and ledger.reopen:  # resumed, its start never reached MLflow (or an older run)
            found = find_tagged_run(self.client, ledger.experiment, RUN_DIR_TAG, where)
            ledger.run_id, ledger.reopen = (found.info.run_id, True) if found else (None, False)
        if ledger.run_id is None:
            ledger.run_id = start_run(self.client, self.cfg, run_name=ledger.run_name,
                                      parent_run_id=ledger.parent_run_id,
                                      extra_tags={**ledger.tags, RUN_DIR_TAG: where})
            created = True
            log.info("MLflow run %s in %s", ledger.run_id, ledger.uri)
            self.save()
        if ledger.reopen:
            note_resumed(self.client, ledger.run_id, self.cfg)
            ledger.reopen = False
            self.save()
        return created

    def _send_records(self, cursor: str) -> int:
        """The records of one log past the ledger's `cursor`, in batches; the cursor moves with each batch that
        arrived, and what did not arrive waits for the next sync."""
        tail = self.tails[cursor]
        records = tail.new_records()
        backlog = self.backlog[cursor] = ([] if tail.restarted else self.backlog[cursor]) + records
        backlog[:] = [r for r in backlog if int(r.get("step", 0)) > getattr(self.ledger, cursor)]
        sent = 0
        while backlog:
            count, batch = 0, []
            while count < len(backlog) and len(batch) < MLFLOW_BATCH - 100:  # a record has < 100 numbers
                batch.extend(record_metrics(backlog[count]))
                count += 1
            self.client.log_batch(self.ledger.run_id, metrics=batch)
            setattr(self.ledger, cursor, int(backlog[count - 1].get("step", 0)))
            self.save()
            del backlog[:count]
            sent += count
        return sent

    def pending(self) -> list[str]:
        """What of the run has not reached MLflow, in words."""
        ledger, missing = self.ledger, []
        if ledger.run_id is None:
            missing.append("the MLflow run itself (params, tags)")
        if not ledger.datasets:
            missing.append("the data sets")
        for name, cursor, path in (("step records", ledger.metrics_step, self.run_dir.metrics),
                                   ("evaluations", ledger.evaluations_step, self.run_dir.evaluations)):
            steps = [int(r.get("step", 0)) for r in JsonlTail(path).new_records()]
            late = [s for s in steps if s > cursor]
            if late:
                missing.append(f"{len(late)} {name} (steps {late[0]}-{late[-1]})")
        if ledger.status and not ledger.artifacts:
            missing.append("the files, plots and best model")
        if ledger.status and not ledger.closed:
            missing.append(f"the end status {ledger.status}")
        return missing
