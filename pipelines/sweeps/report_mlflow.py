"""Reading a sweep's trial runs from the MLflow store (`build_report`), found by the tags the sweep wrote.

Each trial is scored at its best evaluation (highest `metric`, or lowest with mode "min"); every column from that step.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

from mlflow.entities import Metric, ViewType
from mlflow.tracking import MlflowClient

from pgnet.config import Config
from pgnet.errors import PGNetError
from pipelines.sweeps.report_model import (
    ALSO_READ,
    TABLE3_COLUMNS,
    TABLE3_ROWS,
    TrialResult,
    default_mode,
    oriented,
)
from pipelines.sweeps.report_render import Report
from pipelines.tracking.runs import PARENT_TAG, ROLE_TAG, TRIAL_TAG, tracking_uri

log = logging.getLogger("pgnet.report")

# Params that differ between trials without being a swept choice.
BOOKKEEPING_PREFIXES = ("tracking.",)


class ReportError(PGNetError, ValueError):
    """The MLflow store has nothing this report can be built from, as asked."""


def build_report(experiment: str, tracking_uri: str | None = None, metric: str = "keypoints/AP",
                 rows: str | Sequence[str] = TABLE3_ROWS, columns: str | Sequence[str] = TABLE3_COLUMNS,
                 sweep_run_id: str | None = None, mode: str | None = None) -> Report:
    """The sweep `experiment`'s trials from the MLflow store, grouped by `rows`, best by `metric`
    (the highest, or the lowest with `mode` "min"; None: `default_mode`).

    Reads the trials of `sweep_run_id`, or of the latest sweep (parent run) in the experiment.
    FINISHED and KILLED (stopped early by ASHA) trials with an evaluation are counted; others are
    listed in the every-trial table only.
    """
    mode = mode or default_mode(metric)
    if mode not in ("max", "min"):
        raise ReportError(f"mode must be max or min, got {mode!r}")
    uri = checked_uri(tracking_uri)
    client = MlflowClient(uri)
    exp = find_experiment(client, experiment, uri)
    notes: list[str] = []
    parent = sweep_parent(client, exp.experiment_id, experiment, sweep_run_id, notes)
    runs = trial_runs(client, exp.experiment_id, parent)
    if not runs:
        where = f"sweep run {parent}" if parent else f"experiment '{experiment}'"
        raise ReportError(f"{where} has no trial runs (runs tagged {ROLE_TAG}=trial) in {uri}: the sweep has not "
                          "started a trial yet, or this experiment was not written by `pgnet sweep`")
    rows, columns = _keys(rows), _keys(columns)
    _check_keys(runs, metric, rows)
    wanted = list(dict.fromkeys([metric, *columns, *ALSO_READ, "epoch"]))
    trials = [_score_trial(client, run, metric, wanted, mode) for run in runs]
    _fill_defaults(trials, rows, notes)
    _note_uncounted(trials, notes)
    if not any(t.counted for t in trials):
        raise ReportError(f"none of the {len(trials)} trial runs of '{experiment}' is FINISHED or KILLED with an "
                          f"evaluation of '{metric}' (statuses: {_status_counts(trials)}); wait for the sweep's "
                          "first evaluations, or check the trials' logs if they failed")
    return Report(experiment, metric, rows, columns, trials, _swept_params(trials), parent, notes, mode)


def checked_uri(uri: str | None) -> str:
    """The store's URI; an SQLite file that does not exist is an error (MLflow would create an empty one)."""
    uri = tracking_uri(uri)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix):]).is_file():
        raise ReportError(f"no MLflow store at {uri[len(prefix):]}: run `pgnet report` in the folder where the "
                          "sweep ran, or point MLFLOW_TRACKING_URI (or --tracking-uri) at its store")
    return uri


def find_experiment(client: MlflowClient, name: str, uri: str):
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY))
        state = "was deleted" if exp is not None else "does not exist"
        raise ReportError(f"MLflow experiment '{name}' {state} in {uri}; experiments there: "
                          f"{', '.join(names) or '(none)'}. Pass the sweep's name (the experiment a sweep writes to).")
    return exp


def search_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> list:
    """Every active run of the experiment that matches `filter_string`, oldest first."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, ViewType.ACTIVE_ONLY, max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def sweep_parent(client: MlflowClient, experiment_id: str, experiment: str, sweep_run_id: str | None,
                 notes: list[str]) -> str | None:
    """The parent run whose trials are reported: the one asked for, else the latest sweep (None: no parent runs)."""
    parents = search_runs(client, experiment_id, f"tags.`{ROLE_TAG}` = 'sweep'")
    if sweep_run_id is not None:
        if sweep_run_id not in {p.info.run_id for p in parents}:
            known = ", ".join(p.info.run_id for p in parents) or "(none)"
            raise ReportError(f"run {sweep_run_id} is not a sweep run of '{experiment}'; its sweep runs: {known}")
        return sweep_run_id
    if not parents:
        return None
    latest = parents[-1]
    if len(parents) > 1:
        notes.append(f"The experiment holds {len(parents)} sweeps; this report covers the latest "
                     f"(run {latest.info.run_id}); pass its run id to report another.")
    return latest.info.run_id


def trial_runs(client: MlflowClient, experiment_id: str, parent: str | None) -> list:
    query = f"tags.`{ROLE_TAG}` = 'trial'"
    if parent is not None:
        query += f" and tags.`{PARENT_TAG}` = '{parent}'"
    return search_runs(client, experiment_id, query)


def _keys(keys: str | Sequence[str]) -> tuple[str, ...]:
    return (keys,) if isinstance(keys, str) else tuple(keys)  # "loss.box" is one key, not 8 letters


CONFIG_DEFAULTS = Config().flat()  # every config key's default, as MLflow params are keyed


def _fill_defaults(trials: list[TrialResult], rows: tuple[str, ...], notes: list[str]) -> None:
    """A trial logged before a config key existed (no `model.neck` param) has that key's default value."""
    for key in (k for k in rows if k in CONFIG_DEFAULTS):
        placed = [t for t in trials if key not in t.params]
        for trial in placed:
            trial.params[key] = str(CONFIG_DEFAULTS[key])
        if placed:
            notes.append(f"No `{key}` param (logged before the key existed), so counted at its default "
                         f"{key}={CONFIG_DEFAULTS[key]}: trial(s) {', '.join(t.trial_id for t in placed)}.")


def _check_keys(runs: list, metric: str, rows: tuple[str, ...]) -> None:
    params = sorted({k for r in runs for k in r.data.params})
    missing = [k for k in rows if not any(k in r.data.params for r in runs) and k not in CONFIG_DEFAULTS]
    if missing:
        raise ReportError(f"no trial has the param '{missing[0]}' to group rows by; params of the trials: "
                          f"{', '.join(params)}")
    if not any(metric in r.data.metrics for r in runs):
        metrics = sorted({k for r in runs for k in r.data.metrics})
        raise ReportError(f"no trial logged the metric '{metric}'; metrics of the trials: "
                          f"{', '.join(metrics) or '(none: no trial has logged anything yet)'}")


def _score_trial(client: MlflowClient, run, metric: str, wanted: list[str], mode: str = "max") -> TrialResult:
    info = run.info
    trial = TrialResult(info.run_id, run.data.tags.get(TRIAL_TAG, info.run_name or info.run_id[:8]),
                        info.status, dict(run.data.params), info.start_time or 0)
    history = _by_step(client.get_metric_history(info.run_id, metric)) if metric in run.data.metrics else {}
    if not history:
        return trial
    # the best value (highest, or lowest with mode "min"); on a tie the earlier evaluation (reached first)
    trial.step = max(history, key=lambda step: (oriented(history[step], mode), -step))
    for name in wanted:
        if name == metric:
            values = history  # fetched above
        else:
            values = _by_step(client.get_metric_history(info.run_id, name)) if name in run.data.metrics else {}
        if trial.step in values:
            trial.values[name] = values[trial.step]
    trial.epoch = trial.values.pop("epoch", None)
    return trial


def _by_step(history: list) -> dict[int, float]:
    """step -> value (`latest_by_step`)."""
    return {step: m.value for step, m in latest_by_step(history).items()}


def latest_by_step(history: list) -> dict[int, Metric]:
    """step -> its metric; a step logged twice (a retried flush) keeps its latest value, NaN is dropped."""
    out: dict[int, Metric] = {}
    for m in history:
        if not math.isnan(m.value) and (m.step not in out or m.timestamp >= out[m.step].timestamp):
            out[m.step] = m
    return out


def _swept_params(trials: list[TrialResult]) -> list[str]:
    keys = sorted({k for t in trials for k in t.params if not k.startswith(BOOKKEEPING_PREFIXES)})
    return [k for k in keys if len({t.params.get(k) for t in trials}) > 1]


def _status_counts(trials: list[TrialResult]) -> str:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def _note_uncounted(trials: list[TrialResult], notes: list[str]) -> None:
    uncounted = [t for t in trials if not t.counted]
    if uncounted:
        notes.append(f"Not counted: {len(uncounted)} trial run(s) ({_status_counts(uncounted)}) that are not "
                     f"FINISHED/KILLED or have no evaluation; listed below.")
        log.info("report: %d trial runs not counted (%s)", len(uncounted), _status_counts(uncounted))
