"""`RunMirror` against a real MLflow store: what a run directory holds reaches its MLflow run once, in order,
whoever sends it and however often; what did not arrive is said, and sent by the next sync."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pgnet.config import Config
from pgnet.errors import DataError, MissingFileError
from pgnet.run.layout import RunDir
from pgnet.run.metrics_log import JsonlLog
from pipelines.tracking.hooks import tracking_ledger
from pipelines.tracking.ledger import Ledger, read_ledger, write_ledger
from pipelines.tracking.mirror import RunMirror
from pipelines.tracking.sender import BackgroundSender

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing answers


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def tiny_run_dir(tmp_path: Path, steps: int) -> RunDir:
    run_dir = RunDir(tmp_path / "run")
    log = JsonlLog(run_dir.metrics)
    for step in range(1, steps + 1):
        log.append({"step": step, "epoch": 1, "loss": 1.0 / step, "lr": 0.1})
    return run_dir


def mirror_of(run_dir: RunDir, uri: str) -> RunMirror:
    ledger = Ledger(uri=uri, experiment="mirror", run_name="tiny")
    write_ledger(run_dir.path, ledger)
    return RunMirror(run_dir.path, ledger, Config(), datasets=[])


def test_records_arrive_once_whoever_sends_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a new experiment's artifacts go to ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tiny_run_dir(tmp_path, steps=3)
    mirror = mirror_of(run_dir, uri)
    report = mirror.sync()
    assert report.created and report.steps == 3
    client = MlflowClient(uri)
    run_id = mirror.ledger.run_id
    assert history(client, run_id, "loss") == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    # More records, a partial line being written, and an evaluation.
    with run_dir.metrics.open("a") as f:
        f.write(json.dumps({"step": 4, "epoch": 1, "loss": 0.25}) + "\n" + '{"step": 5, "ep')
    JsonlLog(run_dir.evaluations).append({"step": 4, "epoch": 1, "keypoints/AP": 0.5, "keypoints/AP@0.5": 0.7})
    assert mirror.sync().steps == 1
    assert history(client, run_id, "keypoints/AP_at_0.5") == [(4, 0.7)]
    # Another process (the sweep driver, `pgnet mlflow sync`) continues from the ledger: nothing twice.
    again = RunMirror.of(run_dir.path)
    assert again.ledger.run_id == run_id and again.sync().steps == 0
    assert [s for s, _ in history(client, run_id, "loss")] == [1, 2, 3, 4]
    # A resumed run rewrites its log without the steps it redoes: steps already in MLflow are not sent again.
    with run_dir.metrics.open("a") as f:
        f.write('och": 1, "loss": 0.2}\n')  # the line being written is complete
    JsonlLog(run_dir.metrics).truncate_after(2)
    JsonlLog(run_dir.metrics).append({"step": 3, "epoch": 1, "loss": 0.3})
    JsonlLog(run_dir.metrics).append({"step": 4, "epoch": 1, "loss": 0.2})
    JsonlLog(run_dir.metrics).append({"step": 5, "epoch": 1, "loss": 0.1})
    assert mirror.sync().steps == 1
    assert [s for s, _ in history(client, run_id, "loss")] == [1, 2, 3, 4, 5]
    mirror.end("FINISHED")
    assert mirror.pending() == ["the files, plots and best model", "the end status FINISHED"]
    assert mirror.sync(final=True).ended
    assert client.get_run(run_id).info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run_id)} >= {"metrics.jsonl", "evaluations.jsonl"}
    assert mirror.pending() == [] and read_ledger(run_dir.path).done()


def test_an_unreachable_server_costs_the_budget_then_says_what_to_sync(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # each attempt fails at once
    run_dir = tiny_run_dir(tmp_path, steps=2)
    sender = BackgroundSender(mirror_of(run_dir, UNREACHABLE), budget_s=1.0, interval_s=0.2).start()
    assert not sender.finish("FINISHED")
    assert sender.gave_up or sender.down_since is not None
    ledger = read_ledger(run_dir.path)
    assert ledger.run_id is None and ledger.status == "FINISHED" and ledger.metrics_step == 0
    said = caplog.text
    assert "2 step records (steps 1-2)" in said and f"pgnet mlflow sync {run_dir.path}" in said


def test_a_damaged_or_missing_ledger_is_a_clear_error(tmp_path):
    with pytest.raises(MissingFileError, match="not tracked in MLflow"):
        RunMirror.of(tmp_path)
    (tmp_path / "mlflow.json").write_text("{not json")
    with pytest.raises(DataError, match="damaged"):
        RunMirror.of(tmp_path)


def test_the_sweep_driver_closes_a_stopped_trial_once_and_never_waits_on_a_dead_server(tmp_path, monkeypatch,
                                                                                       caplog):
    """`MlflowTrialCloser`: a trial Tune stopped (no end of its own) is closed KILLED from its ledger; a trial
    that sent its own end is left alone; an unreachable server costs one attempt and a warning."""
    from types import SimpleNamespace

    from pipelines.sweeps.sweep import MlflowTrialCloser
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trials = tmp_path / "trials"
    stopped = mirror_of(tiny_run_dir(trials / "stopped", steps=2), uri)
    stopped.sync()
    ended = mirror_of(tiny_run_dir(trials / "ended", steps=1), uri)
    ended.end("FINISHED")
    ended.sync(final=True)
    mirror_of(tiny_run_dir(trials / "unreachable", steps=1), UNREACHABLE)
    closer = MlflowTrialCloser(max_epochs=2, trials_dir=trials)
    for name in ("stopped", "ended", "unreachable"):
        (trials / name / "run").rename(trials / f"{name}-dir")
    for name in ("stopped", "ended", "unreachable"):
        closer.on_trial_complete(0, [], SimpleNamespace(trial_id=f"{name}-dir", last_result={"epoch": 1}))
    client = MlflowClient(uri)
    assert client.get_run(stopped.ledger.run_id).info.status == "KILLED"  # 1 of 2 epochs: stopped early
    assert client.get_run(ended.ledger.run_id).info.status == "FINISHED"
    assert read_ledger(trials / "unreachable-dir").status == "KILLED"  # noted, to be sent by `pgnet mlflow sync`
    assert "pgnet mlflow sync" in caplog.text


def test_a_trial_stopped_after_noting_its_end_is_finished_by_the_sweep_driver(tmp_path, monkeypatch):
    """Tune stops a trial that reached ASHA's max_t while its own end is still being sent: the ledger says
    FINISHED but the files never arrived. The driver sends the rest, keeping the trial's own status."""
    from types import SimpleNamespace

    from pipelines.sweeps.sweep import MlflowTrialCloser
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trials = tmp_path / "trials"
    half = mirror_of(tiny_run_dir(trials / "half", steps=2), uri)
    half.sync()
    half.end("FINISHED")  # noted, then the process was stopped before `sync(final=True)`
    (trials / "half" / "run").rename(trials / "half-dir")
    MlflowTrialCloser(max_epochs=2, trials_dir=trials).on_trial_complete(
        0, [], SimpleNamespace(trial_id="half-dir", last_result={"epoch": 1}))
    client = MlflowClient(uri)
    assert client.get_run(half.ledger.run_id).info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(half.ledger.run_id)} >= {"metrics.jsonl"}
    assert read_ledger(trials / "half-dir").done()


def test_a_run_created_just_before_a_crash_is_the_one_a_resume_goes_on_in(tmp_path, monkeypatch):
    """The process died after MLflow created the run and before the ledger held its id: on resume the mirror
    finds the run by its run-directory tag instead of creating a second one."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tiny_run_dir(tmp_path, steps=2)
    cfg = Config()
    cfg.tracking.experiment = "mirror"
    first = RunMirror(run_dir.path, tracking_ledger(cfg, run_dir.path, uri), cfg, datasets=[])
    first.sync()
    created = first.ledger.run_id
    write_ledger(run_dir.path, tracking_ledger(cfg, run_dir.path, uri))  # the ledger as it was before the crash
    ledger = tracking_ledger(cfg, run_dir.path, uri, resume=True)
    assert ledger.run_id is None
    RunMirror(run_dir.path, ledger, cfg, datasets=[]).sync()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mirror").experiment_id])
    assert [r.info.run_id for r in runs] == [created] and ledger.run_id == created
    assert runs[0].info.status == "RUNNING"
