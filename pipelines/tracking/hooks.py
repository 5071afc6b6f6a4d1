"""A run's MLflow tracking from start to end: its ledger, the background sender, and trainer hooks.

`start_tracking` notes in `run_dir/mlflow.json` which MLflow run mirrors the run (created at once when the
server answers, later otherwise), computes the data sets' descriptions, and starts the background sender
(`pipelines.tracking.sender`). The run's MLflow status ends FINISHED, FAILED or KILLED, never left RUNNING,
once the server has received it; until then the run directory holds everything.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

from mlflow.entities import RunStatus

from pgnet.config import Config
from pipelines.tracking.datasets import dataset_inputs
from pipelines.tracking.ledger import Ledger, read_ledger, write_ledger
from pipelines.tracking.mirror import RunMirror
from pipelines.tracking.runs import tracking_uri
from pipelines.tracking.sender import BackgroundSender

log = logging.getLogger("pgnet.tracking")


def start_tracking(cfg: Config, run_dir: str | Path, uri: str | None = None, resume: bool = False,
                   run_name: str | None = None, parent_run_id: str | None = None, tags: dict[str, str] | None = None,
                   progress: bool = False) -> BackgroundSender:
    """Start mirroring `run_dir` into MLflow at `uri` (default: the config's store); a resumed run goes on in its
    own MLflow run."""
    run_dir = Path(run_dir).absolute()
    ledger = tracking_ledger(cfg, run_dir, uri or tracking_uri(cfg.tracking.tracking_uri), resume, run_name,
                             parent_run_id, tags)
    write_ledger(run_dir, ledger)
    mirror = RunMirror(run_dir, ledger, cfg, dataset_inputs(cfg, progress=progress))
    return BackgroundSender(mirror, cfg.tracking.retry_seconds).start()


def tracking_ledger(cfg: Config, run_dir: Path, uri: str, resume: bool = False, run_name: str | None = None,
                    parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> Ledger:
    """The ledger a run starts with: a new one, or on resume the run directory's own, set to reopen its run."""
    ledger = read_ledger(run_dir) if resume else None
    if ledger is not None and ledger.uri != uri:
        log.warning("%s was tracked in %s; the resumed run is tracked in %s as a new MLflow run", run_dir,
                    ledger.uri, uri)
        ledger = None
    if ledger is None:
        return Ledger(uri=uri, experiment=cfg.tracking.experiment,
                      run_name=run_name or cfg.tracking.run_name or run_dir.name, tags=dict(tags or {}),
                      parent_run_id=parent_run_id, reopen=resume)
    # Resumed: the same MLflow run, RUNNING again, its end still to come. Without a run id the run may still
    # exist (created, then the process died before the ledger said so): the mirror looks it up by its
    # run-directory tag before creating one.
    ledger.reopen = True
    ledger.status, ledger.artifacts, ledger.closed = None, False, False
    return ledger


class MirrorHooks:
    """Trainer hooks (`pgnet.run.training_run.TrainHooks`): an evaluation or an epoch's end is sent at once;
    step records go with the sender's next sync. Nothing here waits for MLflow."""

    def __init__(self, sender: BackgroundSender):
        self.sender = sender

    @property
    def run_id(self) -> str | None:
        return self.sender.mirror.ledger.run_id

    @property
    def client(self):
        return self.sender.mirror.client

    def on_step(self, record: dict[str, Any]) -> None:
        pass

    def on_eval(self, record: dict[str, Any]) -> None:
        self.sender.poke()

    def on_epoch_end(self, epoch: int) -> None:
        self.sender.poke()


@contextlib.contextmanager
def tracking_hooks(cfg: Config, run_dir: str | Path, enabled: bool = True, resume: bool = False,
                   progress: bool = True) -> Iterator[list[MirrorHooks]]:
    """Trainer hooks for the MLflow run of a `pgnet train` in `run_dir` (`progress`: while the synthetic set is
    written, if it is missing); the run's end status is sent whatever happens."""
    if not (enabled and cfg.tracking.mlflow):
        yield []
        return
    sender = start_tracking(cfg, run_dir, resume=resume, progress=progress)
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        yield [MirrorHooks(sender)]
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        sender.finish(status)
