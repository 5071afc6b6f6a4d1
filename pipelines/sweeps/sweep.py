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

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterator

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from pgnet.atomic import write_json_atomic
from pgnet.config import Config
from pgnet.data.source import resolve_data_root
from pgnet.errors import OutputExistsError, PGNetError, TrackingError
from pgnet.run.layout import RunDir
from pipelines.sweeps.spec import SweepConfig, expand_params
from pipelines.tracking.datasets import log_datasets
from pipelines.tracking.hooks import start_tracking
from pipelines.tracking.ledger import read_ledger
from pipelines.tracking.mirror import RunMirror
from pipelines.tracking.models import register_run_model
from pipelines.tracking.runs import (
    PARENT_TAG,
    ROLE_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
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
    """One trial: resolve its config, mirror its run directory into its MLflow child run, train on Ray."""
    cfg = sweep.trial_config(params)
    ctx = tune.get_context()
    run_dir = Path(trials_dir) / ctx.get_trial_id()  # stable across a restored sweep
    if RunDir(run_dir).summary.is_file():
        # trained to its end, but the sweep's driver died before Tune noted it: report, do not train again
        tune.report(json.loads(RunDir(run_dir).summary.read_text()))
        return
    # A restored sweep re-runs the trials it had not finished: from their last checkpoint if they
    # had one, else from scratch (the partial step log is truncated, not appended to); in the same MLflow run.
    resume = run_dir.exists()
    sender = start_trial_tracking(cfg, run_dir, uri, ctx.get_trial_id(), ctx.get_trial_name(), parent_run_id,
                                  params, resume)
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        summary = train_on_ray(cfg, run_dir, resume=resume, callbacks=[TuneReportCallback()])
        write_json_atomic(summary, RunDir(run_dir).summary)
        status = RunStatus.to_string(RunStatus.FINISHED)
    finally:
        sender.finish(status)


def start_trial_tracking(cfg: Config, run_dir: Path, uri: str, trial_id: str, trial_name: str, parent_run_id: str,
                         params: dict[str, Any], resume: bool):
    """The trial's MLflow child run in the sweep's store `uri`, named for its swept values, mirrored from its run
    directory."""
    swept = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in expand_params(params).items())
    return start_tracking(cfg, run_dir, uri=uri, resume=resume, run_name=f"{trial_name} ({swept})",
                          parent_run_id=parent_run_id, tags={TRIAL_TAG: trial_id, ROLE_TAG: "trial"})


# --- closing runs the trial could not close ---------------------------------------------------------

class MlflowTrialCloser(tune.Callback):
    """On the driver: a trial stopped by the scheduler or killed mid-run ends KILLED or FAILED in MLflow.

    A trial that returns sends its own end; one that Tune stops (ASHA) or that dies never reaches its
    `finally`, so its run would stay RUNNING without this. One attempt: an unreachable server must not
    stall the sweep (`pgnet mlflow sync` sends the rest later).
    """

    def __init__(self, max_epochs: int, trials_dir: Path):
        self.max_epochs, self.trials_dir = max_epochs, trials_dir

    def _close(self, trial, status: RunStatus) -> None:
        run_dir = self.trials_dir / trial.trial_id
        ledger = read_ledger(run_dir)
        if ledger is None or ledger.done():  # never tracked, or the trial sent all of its end itself
            return
        mirror = RunMirror(run_dir, ledger)
        if ledger.status is None:
            mirror.end(RunStatus.to_string(status))
        # else the trial noted its end and was stopped (ASHA at max_t stops it too) before sending it all
        try:
            mirror.sync(final=True)
        except Exception as exc:  # the server is unreachable: the ledger keeps what is missing
            log.warning("trial %s: MLflow did not take its end (%s); send it later with: pgnet mlflow sync %s",
                        trial.trial_id, exc, run_dir)

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
    closer = MlflowTrialCloser(base.train.epochs, storage / sweep.name / TRIALS_DIR)
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
    parent = open_parent_run(client, sweep, base, storage, resume)
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
            with tracking_warning(uri, f"the sweep's best {sweep.metric} and its registered model"):
                client.log_metric(parent, f"best/{sweep.metric}", float(best.metrics.get(sweep.metric, math.nan)))
                if sweep.register_model:
                    register_best_trial(client, sweep.register_model, parent, str(best.metrics.get("trial_id")))
        return grid
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        with tracking_warning(uri, f"the sweep's parent run's status {status}"):
            client.set_terminated(parent, status)


def open_parent_run(client: MlflowClient, sweep: SweepConfig, base: Config, storage: Path, resume: bool) -> str:
    """`sweep_parent_run`, or a clear error before any trial starts if MLflow does not answer."""
    try:
        return sweep_parent_run(client, sweep, base, storage, resume)
    except PGNetError:
        raise
    except Exception as exc:  # the client raises many types for an unreachable server
        raise TrackingError(f"MLflow at {client.tracking_uri} did not answer ({type(exc).__name__}); the sweep has "
                            "not started. Start the tracking server, or point MLFLOW_TRACKING_URI (or "
                            "tracking.tracking_uri) at one that runs") from exc


@contextlib.contextmanager
def tracking_warning(uri: str, what: str) -> Iterator[None]:
    """At a sweep's end, an unreachable MLflow costs `what` (said in a warning), not the sweep's results."""
    try:
        yield
    except Exception as exc:
        log.warning("MLflow at %s did not take %s (%s: %s); the trials' results are in the sweep's folder", uri,
                    what, type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")


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
    lines: list[str] = []
    with tracking_warning(uri, "the view of the sweep's trials"):
        lines = _ui_lines(sweep, MlflowClient(uri), base, storage)
    return lines


def _ui_lines(sweep: SweepConfig, client: MlflowClient, base: Config, storage: str | Path) -> list[str]:
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
    return [*lines, "compare the trials in the MLflow UI:",
            *(f"  {line}" for line in ui_instructions(client.tracking_uri, exp, key))]


def pin_paths(sweep: SweepConfig, base: Config) -> None:
    """Make the data paths absolute, in the sweep and in its `base` config: trials run with their trial
    folder as working directory."""
    base.data.pin_paths()
    sweep.overrides["data.synthetic_dir"] = base.data.synthetic_dir
    if base.data.root:
        sweep.overrides["data.root"] = base.data.root
