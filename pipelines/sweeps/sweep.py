"""`pgnet sweep`: a Ray Tune sweep whose every trial is a pipeline-parallel Ray Train run, tracked in MLflow.

Train V2 style: a Tune function trainable builds and fits the `TorchTrainer`
(`pipelines.training.launch.train_on_ray`); `TuneReportCallback` forwards each
epoch's report to Tune, so ASHA can stop weak trials. One MLflow parent run per
sweep, one child run per trial; a driver-side callback closes every child run
as FINISHED, KILLED (stopped early) or FAILED. `--resume` restores the Tuner:
finished trials are kept, unfinished ones continue from their last checkpoint. With `register_model`
in the sweep file, the best trial's model goes to MLflow's Model Registry under that name.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from pgnet.config import Config
from pgnet.data.source import resolve_data_root
from pgnet.errors import OutputExistsError
from pipelines.sweeps.spec import SweepConfig, expand_params
from pipelines.tracking.artifacts import log_run_artifacts
from pipelines.tracking.datasets import log_datasets
from pipelines.tracking.hooks import MlflowHooks
from pipelines.tracking.models import register_run_model
from pipelines.tracking.runs import (
    PARENT_TAG,
    ROLE_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    experiment_id,
    find_tagged_run,
    reopen_tagged_run,
    start_run,
    tracking_uri,
)
from pipelines.tracking.ui import child_runs_filter, save_runs_view, ui_instructions
from pipelines.training.launch import train_on_ray
from pipelines.training.ray_runtime import DRIVER_CPU, check_capacity, ensure_ray

log = logging.getLogger("pgnet.sweep")

TRIALS_DIR = "trials"  # storage/<sweep>/trials/<trial id>: each trial's pgnet run directory
REGISTERED_TAG = "pgnet.registered_model"  # on the parent run: name/version of the best trial's model


# --- the trial ------------------------------------------------------------------------------------

def run_trial(params: dict[str, Any], sweep: SweepConfig, parent_run_id: str, uri: str, trials_dir: str) -> None:
    """One trial: resolve its config, open (or reopen) its MLflow child run, train on Ray."""
    cfg = sweep.trial_config(params)
    ctx = tune.get_context()
    run_dir = Path(trials_dir) / ctx.get_trial_id()  # stable across a restored sweep
    client = MlflowClient(uri)
    run_id = trial_run_id(client, cfg, ctx.get_trial_id(), ctx.get_trial_name(), parent_run_id, params)
    hooks = MlflowHooks(client, run_id)
    # A restored sweep re-runs the trials it had not finished: from their last checkpoint if they
    # had one, else from scratch (the partial step log is truncated, not appended to).
    resume = run_dir.exists()
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        train_on_ray(cfg, run_dir, resume=resume, tracking=hooks.target, callbacks=[TuneReportCallback()])
        status = RunStatus.to_string(RunStatus.FINISHED)
    finally:
        hooks.finish(run_dir, status)


def trial_run_id(client: MlflowClient, cfg: Config, trial_id: str, trial_name: str, parent_run_id: str,
                 params: dict[str, Any]) -> str:
    """The trial's child run: found by its trial id when the sweep was restored, else created."""
    found = reopen_tagged_run(client, cfg.tracking.experiment, TRIAL_TAG, trial_id)
    if found:
        return found.info.run_id
    swept = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in expand_params(params).items())
    run_id = start_run(client, cfg, run_name=f"{trial_name} ({swept})", parent_run_id=parent_run_id,
                       extra_tags={TRIAL_TAG: trial_id, ROLE_TAG: "trial"})
    log_datasets(client, run_id, cfg)
    return run_id


# --- closing runs the trial could not close ---------------------------------------------------------

class MlflowTrialCloser(tune.Callback):
    """On the driver: a trial stopped by the scheduler or killed mid-run ends KILLED or FAILED in MLflow.

    A trial that returns closes its own run; one that Tune stops (ASHA) or that
    dies never reaches its `finally`, so its run would stay RUNNING without this.
    """

    def __init__(self, uri: str, experiment: str, max_epochs: int, trials_dir: Path):
        self.uri, self.experiment, self.max_epochs, self.trials_dir = uri, experiment, max_epochs, trials_dir

    def _close(self, trial, status: RunStatus) -> None:
        client = MlflowClient(self.uri)
        exp = experiment_id(client, self.experiment)
        for run in client.search_runs([exp], filter_string=f"tags.`{TRIAL_TAG}` = '{trial.trial_id}'"):
            if run.info.status == "RUNNING":
                run_dir = self.trials_dir / trial.trial_id
                try:
                    log_run_artifacts(client, run.info.run_id, run_dir)
                finally:
                    client.set_terminated(run.info.run_id, RunStatus.to_string(status))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        epochs = (trial.last_result or {}).get("epoch", 0)
        self._close(trial, RunStatus.FINISHED if epochs >= self.max_epochs else RunStatus.KILLED)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._close(trial, RunStatus.FAILED)


# --- the sweep --------------------------------------------------------------------------------------

def trainable(sweep: SweepConfig, storage: Path, parent_run_id: str, uri: str):
    """`run_trial` with the sweep's fixed arguments, asking Tune for a sliver of CPU (it only waits)."""
    return tune.with_resources(
        tune.with_parameters(run_trial, sweep=sweep, parent_run_id=parent_run_id, uri=uri,
                             trials_dir=str(storage / sweep.name / TRIALS_DIR)), {"cpu": DRIVER_CPU})


def build_tuner(sweep: SweepConfig, base: Config, storage: Path, parent_run_id: str, uri: str) -> tune.Tuner:
    closer = MlflowTrialCloser(uri, base.tracking.experiment, base.train.epochs, storage / sweep.name / TRIALS_DIR)
    return tune.Tuner(
        trainable(sweep, storage, parent_run_id, uri),
        param_space=sweep.param_space(),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                                    max_concurrent_trials=sweep.max_concurrent_trials,
                                    scheduler=_scheduler(sweep, base), search_alg=_searcher(sweep)),
        run_config=tune.RunConfig(name=sweep.name, storage_path=str(storage),
                                  callbacks=[closer],
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def _scheduler(sweep: SweepConfig, base: Config):
    if sweep.scheduler.name == "asha":
        return tune.schedulers.ASHAScheduler(time_attr="epoch", max_t=max(1, base.train.epochs),
                                             grace_period=sweep.scheduler.grace_period,
                                             reduction_factor=sweep.scheduler.reduction_factor)
    return None


def _searcher(sweep: SweepConfig):
    if sweep.search.name == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch
        return OptunaSearch(sampler=TPESampler(seed=sweep.search.seed))
    if sweep.search.name == "random":
        return tune.search.BasicVariantGenerator(random_state=sweep.search.seed)
    return None


def sweep_parent_run(client: MlflowClient, sweep: SweepConfig, base: Config, storage: Path, resume: bool) -> str:
    """The sweep's MLflow parent run (reopened on --resume)."""
    where = str(storage / sweep.name)
    found = reopen_tagged_run(client, base.tracking.experiment, SWEEP_TAG, where) if resume else None
    if found:
        return found.info.run_id
    run_id = start_run(client, base, run_name=sweep.name, extra_tags={ROLE_TAG: "sweep", SWEEP_TAG: where})
    client.log_param(run_id, "sweep.file", sweep.source)
    client.log_param(run_id, "sweep.trials", sweep.total_trials())
    log_datasets(client, run_id, base)
    return run_id


def run_sweep(sweep: SweepConfig, storage: str | Path = "runs/sweeps", resume: bool = False) -> tune.ResultGrid:
    """Run (or `resume`) the sweep; returns Tune's result grid."""
    storage = Path(storage).absolute()
    base = sweep.base_config()
    pin_paths(sweep, base)
    resolve_data_root(base.data)  # generate the synthetic set once, before trials start
    concurrent = min(sweep.max_concurrent_trials, sweep.total_trials())
    largest = sweep.largest_trial_config()  # a swept pipeline.stages makes some trials larger than the first
    ensure_ray(largest, concurrent_runs=concurrent)
    check_capacity(largest, concurrent)
    uri = tracking_uri(base.tracking.tracking_uri)
    client = MlflowClient(uri)
    parent = sweep_parent_run(client, sweep, base, storage, resume)
    log.info("sweep %s: %d trials, %d at a time; MLflow parent run %s in %s", sweep.name, sweep.total_trials(),
             concurrent, parent, uri)
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        path = storage / sweep.name
        if resume and tune.Tuner.can_restore(str(path)):
            tuner = tune.Tuner.restore(str(path), trainable=trainable(sweep, storage, parent, uri),
                                       resume_unfinished=True, resume_errored=True)
        else:
            if path.exists() and not resume:
                raise OutputExistsError(f"{path} holds an earlier run of this sweep; pass --resume to continue it, "
                                      "or --storage somewhere else to start afresh")
            tuner = build_tuner(sweep, base, storage, parent, uri)
        grid = tuner.fit()
        status = RunStatus.to_string(RunStatus.FINISHED)
        best = grid.get_best_result(metric=sweep.metric, mode=sweep.mode, scope="all")
        if best and best.metrics:
            client.log_metric(parent, f"best/{sweep.metric}", float(best.metrics.get(sweep.metric, math.nan)))
            if sweep.register_model:
                register_best_trial(client, sweep.register_model, parent, str(best.metrics.get("trial_id")))
        return grid
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        client.set_terminated(parent, status)


# --- the sweep in MLflow: its best model registered, its trials in the UI ----------------------------

def register_best_trial(client: MlflowClient, name: str, parent_run_id: str, trial_id: str):
    """Register the model of the sweep's best trial as a new version of `name`, noted on the parent run
    (`REGISTERED_TAG`: name/version); None if that trial logged no model."""
    parent = client.get_run(parent_run_id)
    found = client.search_runs([parent.info.experiment_id], filter_string=(
        f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = '{parent_run_id}'"), max_results=1)
    version = register_run_model(client, found[0].info.run_id, name) if found else None
    if version is None:
        log.warning("sweep %s: trial %s logged no model, nothing registered as %r", parent.info.run_name, trial_id,
                    name)
        return None
    client.set_tag(parent_run_id, REGISTERED_TAG, f"{name}/{version.version}")
    log.info("registered model %s version %s (trial %s)", name, version.version, trial_id)
    return version


def sweep_tracking_lines(sweep: SweepConfig, storage: str | Path = "runs/sweeps") -> list[str]:
    """What to tell a user after a sweep: the registered model version, and how to open its trials in the
    MLflow UI (a view of the sweep's trials ranked by its metric, with the swept params as columns)."""
    base = sweep.base_config()
    uri = tracking_uri(base.tracking.tracking_uri)
    client = MlflowClient(uri)
    parent = find_tagged_run(client, base.tracking.experiment, SWEEP_TAG, str(Path(storage).absolute() / sweep.name))
    if parent is None:
        return []
    lines = []
    registered = parent.data.tags.get(REGISTERED_TAG)
    if registered:
        name, version = registered.rsplit("/", 1)
        lines.append(f"best trial's model registered as {name} version {version} (models:/{name}/{version})")
    swept = dict.fromkeys(k for params in sweep.corner_params() for k in expand_params(params))
    metrics = dict.fromkeys((sweep.metric, "keypoints/AP", "bbox/AP"))
    exp = parent.info.experiment_id
    key = save_runs_view(client, exp, params=tuple(swept), metrics=tuple(metrics), order_metric=sweep.metric,
                         ascending=sweep.mode == "min", search_filter=child_runs_filter(parent.info.run_id))
    return [*lines, "compare the trials in the MLflow UI:", *(f"  {line}" for line in ui_instructions(uri, exp, key))]


def pin_paths(sweep: SweepConfig, base: Config) -> None:
    """Make the data paths absolute, in the sweep and in its `base` config: trials run with their trial
    folder as working directory."""
    base.data.pin_paths()
    sweep.overrides["data.synthetic_dir"] = base.data.synthetic_dir
    if base.data.root:
        sweep.overrides["data.root"] = base.data.root
