"""MLflow tracking of training runs: params, per-step and per-evaluation metrics, tags, artifacts.

The default store is `sqlite:///mlflow.db` in the working directory;
`MLFLOW_TRACKING_URI` (or `tracking.tracking_uri`) points it at a server. A run
always ends FINISHED, FAILED or KILLED, never left RUNNING.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from pgnet.config import Config
from pgnet.metrics_log import EVALUATIONS_FILE, METRICS_FILE, read_jsonl

log = logging.getLogger("pgnet.tracking")

DEFAULT_STORE = "mlflow.db"
PARENT_TAG = "mlflow.parentRunId"
# Tags of sweep runs, written by `pipelines.sweep` and read by `pipelines.report`.
ROLE_TAG = "pgnet.role"  # "sweep" (the parent run) or "trial"
TRIAL_TAG = "pgnet.trial_id"
SWEEP_TAG = "pgnet.sweep_dir"
RUN_DIR_TAG = "pgnet.run_dir"  # a `pgnet train` run's directory: `--resume` continues its MLflow run
PREDICTION_IMAGES = 8


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
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
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
    params = [Param(k, _param_text(v)) for k, v in sorted(cfg.flat().items())]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    return run.info.run_id


def _param_text(value: Any) -> str:
    return "null" if value is None else str(value)[:6000]


class MlflowHooks:
    """Trainer hooks (see `pgnet.train.TrainHooks`) that stream a run into MLflow."""

    def __init__(self, client: MlflowClient, run_id: str, flush_every: int = 20):
        self.client, self.run_id = client, run_id
        self.flush_every = flush_every
        self.pending: list[Metric] = []

    def _metrics(self, record: dict[str, Any], skip: tuple[str, ...]) -> list[Metric]:
        now = int(time.time() * 1000)
        step = int(record.get("step", 0))
        return [Metric(_metric_key(k), float(v), now, step) for k, v in record.items()
                if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)]

    def on_step(self, record: dict[str, Any]) -> None:
        self.pending.extend(self._metrics(record, skip=("step",)))
        if len(self.pending) >= self.flush_every * 10:
            self.flush()

    def on_eval(self, record: dict[str, Any]) -> None:
        self.pending.extend(self._metrics(record, skip=("step",)))
        self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=self.pending[i:i + 1000])
        self.pending = []

    def finish(self, run_dir: Path, status: str) -> None:
        """Flush, upload the run's files and artifacts, and close the run with `status`."""
        try:
            self.flush()
            log_run_artifacts(self.client, self.run_id, Path(run_dir))
        finally:
            self.client.set_terminated(self.run_id, status)


def _metric_key(name: str) -> str:
    """MLflow keys allow letters, digits, _ - . / and spaces: keep ours (`keypoints/AP`) as they are."""
    return name.replace("@", "_at_")


def log_run_artifacts(client: MlflowClient, run_id: str, run_dir: Path) -> None:
    from pgnet.train import BEST_CHECKPOINT
    for name in ("config.yaml", METRICS_FILE, EVALUATIONS_FILE, "balance.json"):
        if (run_dir / name).exists():
            client.log_artifact(run_id, str(run_dir / name))
    if (run_dir / BEST_CHECKPOINT).exists():
        client.log_artifact(run_id, str(run_dir / BEST_CHECKPOINT), artifact_path="checkpoints")
    with tempfile.TemporaryDirectory() as tmp:
        for png in render_run_pngs(run_dir, Path(tmp)):
            client.log_artifact(run_id, str(png), artifact_path="plots")


def render_run_pngs(run_dir: Path, out_dir: Path) -> list[Path]:
    """The loss curves and the best evaluation's people drawn on validation images, as PNGs."""
    from pgnet.visualize import plot_loss_curves
    written = []
    records = read_jsonl(run_dir / METRICS_FILE)
    if records:
        written.append(plot_loss_curves(records, out_dir / "loss_curves.png", title=run_dir.name))
    grid = render_predictions_png(run_dir, out_dir / "val_predictions.png")
    if grid is not None:
        written.append(grid)
    return written


def render_predictions_png(run_dir: Path, path: Path) -> Path | None:
    """Draw the best evaluation's predictions (`val_predictions_best.json`) on the first validation images."""
    import json

    from pgnet.config import load_config
    from pgnet.data.dataset import coco_paths
    from pgnet.data.records import load_coco_records
    from pgnet.data.source import resolve_data_root
    from pgnet.train import BEST_PREDICTIONS
    from pgnet.visualize import predictions_grid
    from PIL import Image

    predictions = run_dir / BEST_PREDICTIONS
    if not predictions.exists() or not (run_dir / "config.yaml").exists():
        return None
    cfg = load_config(run_dir / "config.yaml")
    results = json.loads(predictions.read_text())
    ann_file, image_dir = coco_paths(resolve_data_root(cfg.data, progress=False), cfg.data.val_split)
    records, _ = load_coco_records(ann_file, image_dir)
    pairs = []
    for record in records[:PREDICTION_IMAGES]:
        people = [r for r in results if r["image_id"] == record.image_id]
        with Image.open(record.file) as img:
            pairs.append((img.convert("RGB"), people))
    return predictions_grid(pairs, path, cols=4) if pairs else None


def reopen_tagged_run(client: MlflowClient, experiment: str, tag: str, value: str):
    """The newest run of `experiment` whose `tag` is `value`, set RUNNING again; None if there is none.
    How a resumed run, trial or sweep goes on in its own MLflow run."""
    quote = '"' if "'" in value else "'"
    found = client.search_runs([experiment_id(client, experiment)],
                               filter_string=f"tags.`{tag}` = {quote}{value}{quote}",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if not found:
        return None
    client.update_run(found[0].info.run_id, status="RUNNING")
    return found[0]


def reopen_run(client: MlflowClient, cfg: Config, run_dir: str) -> str | None:
    """The MLflow run of the `pgnet train` run in `run_dir`, reopened (`reopen_tagged_run`); None if there is none.

    Its params stay those of its start (MLflow params cannot change): a resume with other
    `train.epochs` is noted in the tag `pgnet.resumed_with`."""
    run = reopen_tagged_run(client, cfg.tracking.experiment, RUN_DIR_TAG, run_dir)
    if run is None:
        log.warning("no MLflow run of %s in experiment %r: the resumed run gets a new one", run_dir,
                    cfg.tracking.experiment)
        return None
    changed = {k: _param_text(v) for k, v in cfg.flat().items()
               if k in run.data.params and run.data.params[k] != _param_text(v)}
    if changed:
        resumed_with = ", ".join(f"{k}={v}" for k, v in sorted(changed.items()))
        client.set_tag(run.info.run_id, "pgnet.resumed_with", resumed_with[:5000])
    return run.info.run_id


@contextlib.contextmanager
def tracking_hooks(cfg: Config, run_dir: str | Path, enabled: bool = True,
                   parent_run_id: str | None = None, resume: bool = False) -> Iterator[list]:
    """Trainer hooks for one MLflow run around a `pgnet train` (with `resume`, the run dir's own run,
    reopened); the run is closed whatever happens."""
    if not (enabled and cfg.tracking.mlflow):
        yield []
        return
    client = MlflowClient(tracking_uri(cfg.tracking.tracking_uri))
    where = str(Path(run_dir).absolute())
    run_id = reopen_run(client, cfg, where) if resume else None
    if run_id is None:
        run_id = start_run(client, cfg, run_name=cfg.tracking.run_name or Path(run_dir).name,
                           parent_run_id=parent_run_id, extra_tags={RUN_DIR_TAG: where})
        log.info("MLflow run %s in %s", run_id, client.tracking_uri)
    else:
        log.info("MLflow run %s in %s, reopened: the resumed run goes on in it", run_id, client.tracking_uri)
    hooks = MlflowHooks(client, run_id)
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        yield [hooks]
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        hooks.finish(Path(run_dir), status)
