"""`run_dir/mlflow.json`: which MLflow run mirrors a run directory, and how much of it has arrived there.

The run directory is the record of a run; its MLflow run is a copy that may lag behind (a slow or
unreachable server). The ledger says what the copy holds, so that whoever sends next (the run's own
background sender, the sweep driver, `pgnet mlflow sync`) sends only what is missing, never twice.
Each field is updated after the MLflow call it describes has succeeded.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from pgnet.atomic import write_json_atomic
from pgnet.errors import DataError
from pgnet.run.layout import RunDir


@dataclass
class Ledger:
    uri: str  # the tracking store
    experiment: str
    run_name: str
    tags: dict[str, str] = field(default_factory=dict)  # set when the MLflow run is created
    parent_run_id: str | None = None  # a sweep trial's parent run
    run_id: str | None = None  # None: not created yet (the server was unreachable at the start)
    reopen: bool = False  # a resumed run: set its MLflow run RUNNING again before sending more
    datasets: bool = False  # the dataset inputs are logged
    metrics_step: int = 0  # metrics.jsonl records with step <= this are in MLflow
    evaluations_step: int = -1  # evaluations.jsonl records with step <= this are in MLflow
    status: str | None = None  # the run's end (FINISHED, FAILED, KILLED) once it has ended
    artifacts: bool = False  # files, plots and the best model are uploaded
    closed: bool = False  # the MLflow run carries `status`

    def done(self) -> bool:
        return self.closed and self.status is not None


def ledger_path(run_dir: str | Path) -> Path:
    return RunDir(run_dir).mlflow


def read_ledger(run_dir: str | Path) -> Ledger | None:
    """The run directory's ledger; None if the run was never tracked. A damaged file is a clear error."""
    path = ledger_path(run_dir)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        known = {f.name for f in fields(Ledger)}
        return Ledger(**{k: v for k, v in raw.items() if k in known})
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path} is damaged ({exc}); delete it and run `pgnet mlflow sync {Path(run_dir)}` to "
                        "send the whole run to a new MLflow run") from exc


def write_ledger(run_dir: str | Path, ledger: Ledger) -> None:
    write_json_atomic(asdict(ledger), ledger_path(run_dir), indent=1)
