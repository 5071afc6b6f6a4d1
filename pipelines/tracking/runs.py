"""MLflow runs of the platform: the store, experiments, run creation with params and tags, reopening.

The default store is `sqlite:///mlflow.db` in the working directory; `MLFLOW_TRACKING_URI`
(or `tracking.tracking_uri`) points it at a server. Tags name a run's role (sweep, trial) and
its run directory, so that a resumed run, trial or sweep goes on in its own MLflow run.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from pgnet.config import Config

log = logging.getLogger("pgnet.tracking")

DEFAULT_STORE = "mlflow.db"
PARENT_TAG = "mlflow.parentRunId"
# Tags of sweep runs, written by `pipelines.sweeps.sweep` and read by `pipelines.sweeps.report`.
ROLE_TAG = "pgnet.role"  # "sweep" (the parent run) or "trial"
TRIAL_TAG = "pgnet.trial_id"
SWEEP_TAG = "pgnet.sweep_dir"
RUN_DIR_TAG = "pgnet.run_dir"  # a `pgnet train` run's directory: `--resume` continues its MLflow run
# The experiment kind the MLflow UI's kind selector writes; "Machine learning" (not "GenAI apps & agents").
# MLflow 3.17 picks its view from the URL's `workflowType` instead (`pipelines.tracking.ui`).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def tracking_uri(cfg_uri: str | None = None) -> str:
    """`tracking.tracking_uri`, else $MLFLOW_TRACKING_URI, else an SQLite file in the working directory.

    A relative SQLite path is made absolute so Ray workers (other working directories) share it.
    """
    uri = cfg_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE}"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str(Path(uri[len(prefix):]).absolute())
    return uri


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment `name`, created when missing as a machine-learning experiment (`EXPERIMENT_KIND`)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:  # created meanwhile by a concurrent trial
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def run_tags(cfg: Config) -> dict[str, str]:
    """What a reader needs to reproduce or compare a run: code version, library versions, parallelism."""
    tags = {
        "pgnet.git_commit": git_commit(),
        "pgnet.torch_version": importlib.metadata.version("torch"),
        "pgnet.ray_version": importlib.metadata.version("ray"),
        "pgnet.stages": str(cfg.pipeline.stages),
        "pgnet.data_parallel": str(cfg.pipeline.data_parallel),
        "pgnet.schedule": cfg.pipeline.schedule if cfg.pipeline.stages >= 1 else "none",
        "pgnet.microbatches": str(cfg.pipeline.microbatches),
        "pgnet.data": cfg.data.root or "synthetic",
    }
    return tags


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_run(client: MlflowClient, cfg: Config, run_name: str | None = None,
              parent_run_id: str | None = None, extra_tags: dict[str, str] | None = None) -> str:
    """Create a run with every config value as a param and the tags of `run_tags`; returns its id."""
    exp = experiment_id(client, cfg.tracking.experiment)
    tags = {**run_tags(cfg), **(extra_tags or {})}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    run = client.create_run(exp, run_name=run_name or cfg.tracking.run_name, tags=tags)
    params = [Param(k, param_text(v)) for k, v in sorted(cfg.flat().items())]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    return run.info.run_id


def param_text(value: Any) -> str:
    return "null" if value is None else str(value)[:6000]


def find_tagged_run(client: MlflowClient, experiment: str, tag: str, value: str):
    """The newest run of `experiment` whose `tag` is `value`; None if there is none."""
    quote = '"' if "'" in value else "'"
    found = client.search_runs([experiment_id(client, experiment)],
                               filter_string=f"tags.`{tag}` = {quote}{value}{quote}",
                               order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def reopen_tagged_run(client: MlflowClient, experiment: str, tag: str, value: str):
    """The newest run of `experiment` whose `tag` is `value`, set RUNNING again; None if there is none.
    How a resumed run, trial or sweep goes on in its own MLflow run."""
    found = find_tagged_run(client, experiment, tag, value)
    if found is not None:
        client.update_run(found.info.run_id, status="RUNNING")
    return found


def note_resumed(client: MlflowClient, run_id: str, cfg: Config) -> None:
    """Set the MLflow run of a resumed run RUNNING again. Its params stay those of its start (MLflow params
    cannot change): a resume with other values (`train.epochs`...) is noted in the tag `pgnet.resumed_with`."""
    run = client.get_run(run_id)
    client.update_run(run_id, status="RUNNING")
    changed = {k: param_text(v) for k, v in cfg.flat().items()
               if k in run.data.params and run.data.params[k] != param_text(v)}
    if changed:
        resumed_with = ", ".join(f"{k}={v}" for k, v in sorted(changed.items()))
        client.set_tag(run_id, "pgnet.resumed_with", resumed_with[:5000])
