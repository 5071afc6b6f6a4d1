"""Ray Tune sweeps of pipeline-parallel trials, tracked in a real MLflow store read back by the client.

ASHA stops weak trials (KILLED in MLflow), a trial that crashes ends FAILED, the
others FINISHED; an interrupted sweep resumes without running a trial twice.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from pgnet.run.metrics_log import read_jsonl
from pipelines.sweeps.paper_report import build_paper_report
from pipelines.sweeps.spec import load_sweep
from pipelines.sweeps.sweep import run_sweep
from pipelines.tracking.runs import ROLE_TAG
from tests.support.configs import PIPELINE_TINY

pytestmark = pytest.mark.ray


def sweep_file(tmp_path: Path, synthetic_dir: Path, name: str, search_space: dict, stages: int = 2,
               epochs: int = 2, **extra) -> Path:
    overrides = dict(item.split("=", 1) for item in PIPELINE_TINY)
    overrides = {k: yaml.safe_load(v) for k, v in overrides.items()}
    overrides.update({"data.synthetic_dir": str(synthetic_dir), "tracking.mlflow": True, "pipeline.stages": stages,
                      "train.max_steps": 0, "train.epochs": epochs,
                      "train.channels_last": False, "train.precision": "fp32",  # as the smoke sweep
                      "model.decoder_c2": False})
    spec = {"name": name, "base": "cpu_small", "overrides": overrides, "search_space": search_space,
            "metric": "loss", "mode": "min", "max_concurrent_trials": 2, **extra}
    if "extends" in spec:  # the extended sweep names the base
        del spec["base"]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> MlflowClient:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # new experiments keep their artifacts in ./mlruns: here, not in the checkout
    return MlflowClient(uri)


def runs_of(client: MlflowClient, experiment: str) -> tuple[list, list]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return ([r for r in runs if r.data.tags.get(ROLE_TAG) == "sweep"],
            [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"])


def test_a_shrunken_table3_sweep_is_tracked_in_mlflow_and_reported_as_the_paper(local_ray, synthetic_dir,
                                                                                 mlflow_store, tmp_path):
    """table3_synthetic, shrunken to 4 of its cells and tiny trials, under ASHA: sweep -> MLflow -> paper report.

    One stage per trial: what is tested here is Tune, ASHA, MLflow and the report (a trial on one worker
    starts faster); the crashing-trial test below runs 2-stage trials."""
    cells = [{"model.backbone": "resnet50", "model.neck": neck} for neck in ("fpn", "cffm")]
    path = sweep_file(tmp_path, synthetic_dir, "table3_small", {"arch": {"grid": cells},
                                                                 "model.norm": {"grid": ["gn", "cbn"]}},
                      stages=1, extends="table3_synthetic",
                      scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
                      register_model="table3-small")
    grid = run_sweep(load_sweep(path), storage=tmp_path / "sweeps")
    assert len(grid) == 4 and not any(r.error for r in grid)
    # the best trial by the sweep's metric: its model is version 1 of the sweep file's `register_model`
    best = grid.get_best_result(metric="loss", mode="min", scope="all")
    (version,) = mlflow_store.search_model_versions("name = 'table3-small'")
    assert mlflow_store.get_run(version.run_id).data.tags["pgnet.trial_id"] == best.metrics["trial_id"]

    parents, trials = runs_of(mlflow_store, "table3_small")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == 4
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {parents[0].info.run_id}
    statuses = sorted(t.info.status for t in trials)
    assert "KILLED" in statuses and "FINISHED" in statuses, statuses  # ASHA stopped someone
    assert sorted((t.data.params["model.neck"], t.data.params["model.norm"]) for t in trials) == [
        ("cffm", "cbn"), ("cffm", "gn"), ("fpn", "cbn"), ("fpn", "gn")]
    for run in trials:
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        assert params["model.backbone"] == "resnet50" and params["loss.box"] == "cdiou"
        assert params["pipeline.stages"] == "1"
        assert {"pgnet.git_commit", "pgnet.torch_version", "pgnet.ray_version", "pgnet.stages",
                "pgnet.data_parallel", "pgnet.schedule"} <= set(tags)
        for key in ("loss", "loss/hm", "loss/box", "lr", "images_per_s", "keypoints/AP", "keypoints/AP50",
                    "bbox/AP", "bbox/APS", "bbox/APM", "bbox/APL", "epoch"):
            assert key in metrics, key
        # ASHA stops a trial after it judged its first epoch; the stop reaches the Train run a moment later,
        # so a stopped trial may have trained (and evaluated) part or all of its second epoch meanwhile
        evaluated = len(mlflow_store.get_metric_history(run.info.run_id, "keypoints/AP"))  # one per epoch
        steps = sorted(m.step for m in mlflow_store.get_metric_history(run.info.run_id, "loss"))
        assert steps == list(range(1, len(steps) + 1))  # per step, none twice
        if run.info.status == "FINISHED":
            assert (evaluated, len(steps)) == (2, 6)
        else:
            assert evaluated in (1, 2) and 3 * evaluated <= len(steps) <= 6
        artifacts = {a.path for a in mlflow_store.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "metrics.jsonl", "evaluations.jsonl", "plots"} <= artifacts
        assert "checkpoints" not in artifacts  # the best checkpoint is uploaded once: as the run's model
        assert [mlflow_store.get_logged_model(o.model_id).source_run_id for o in run.outputs.model_outputs] == [
            run.info.run_id]
        assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"synthetic-train2017", "synthetic-val2017"}
        plots = {a.path for a in mlflow_store.list_artifacts(run.info.run_id, "plots")}
        assert plots == {"plots/loss_curves.png", "plots/val_predictions.png"}

    # the paper's layout, from the store alone: the four cells measured, the other five not run
    report = build_paper_report("table3_small", "table3")
    rows = [line.split("|")[1:-1] for line in report.table_markdown().splitlines()[2:]]
    states = [("not run" if "not run" in row[2] else "measured") for row in rows]
    assert states == ["measured", "not run", "measured", "not run", "not run", "not run", "measured", "not run",
                      "measured"]  # R50+FPN: GN, syncGN, CBN; R101+FPN: ...; R50+CFFM: GN, syncGN, CBN
    by_cell = {(t.data.params["model.neck"], t.data.params["model.norm"]): t for t in trials}
    for row, (neck, norm) in ((rows[0], ("fpn", "gn")), (rows[8], ("cffm", "cbn"))):
        run = by_cell[(neck, norm)]
        best = max(m.value for m in mlflow_store.get_metric_history(run.info.run_id, "bbox/AP"))
        assert row[2].strip().startswith(f"{100 * best:.1f} / {'37.8' if neck == 'fpn' else '39.4'} (")


def test_a_crashing_trial_ends_failed_in_mlflow(local_ray, synthetic_dir, mlflow_store, tmp_path):
    # a balance of one entry for two stages: the trial fails as its Train run is planned (a crash inside the
    # workers takes the same way out of the trial, and costs a worker group's start-up more)
    path = sweep_file(tmp_path, synthetic_dir, "crash", {"pipeline.balance": {"grid": [[22]]}})
    grid = run_sweep(load_sweep(path), storage=tmp_path / "sweeps")
    assert len(grid) == 1 and "pipeline.balance has 1 entries but the run needs 2" in str(grid[0].error)
    parents, trials = runs_of(mlflow_store, "crash")
    assert [t.info.status for t in trials] == ["FAILED"]
    assert parents[0].info.status == "FINISHED"  # the sweep itself ran to its end


@pytest.mark.slow
def test_a_killed_sweep_driver_resumes_without_running_a_trial_twice(local_ray, synthetic_dir, mlflow_store,
                                                                    tmp_path):
    """Drill: the sweep's driver is killed mid-sweep (the second of two trials running), then `--resume`d: the
    finished trial is kept, the other continues in its own MLflow run, and every run ends FINISHED."""
    # one stage per trial: what is tested here is Tune's resume, and a trial on one worker starts faster
    path = sweep_file(tmp_path, synthetic_dir, "resumable", {"loss.box": {"grid": ["iou", "giou"]}}, stages=1,
                      epochs=1, max_concurrent_trials=1)
    storage = tmp_path / "sweeps"
    command = [sys.executable, "-m", "pipelines.cli", "sweep", "--config", str(path), "--storage", str(storage)]
    # the drivers join the session's Ray (as under `ray job submit`) instead of starting a second one
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and driver.poll() is None:
            # one trial at a time: once the second trial has its run, Tune has recorded the first as done
            trials = runs_of_or_empty(mlflow_store, "resumable")
            if len(trials) >= 2:
                break
            time.sleep(1)
        finished = [t for t in trials if t.info.status == "FINISHED"]
        assert len(finished) == 1, "the first trial did not finish before the deadline"
        first = finished[0]
        trained = {d.name: len(read_jsonl(d / "metrics.jsonl")) for d in (storage / "resumable" / "trials").iterdir()}
        driver.send_signal(signal.SIGKILL)  # the driver dies without warning (its node lost, the OOM killer)
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    _, trials = runs_of(mlflow_store, "resumable")
    assert [t.info.status for t in trials].count("FINISHED") == 1, "the sweep was not interrupted mid-way"
    # Ray frees a dead driver's actors and placement groups a few seconds later; resuming before that, the
    # resumed trial's workers were destroyed with them (seen here). A user resumes later than a test.
    deadline = time.time() + 120
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.time() < deadline:
        time.sleep(0.5)

    # `pgnet sweep --resume` is this call (the test's process is already on the session's Ray)
    resumed = time.time()
    grid = run_sweep(load_sweep(path), storage=storage, resume=True)
    resumed = time.time() - resumed
    assert len(grid) == 2 and not any(r.error for r in grid)
    _, trials = runs_of(mlflow_store, "resumable")
    assert len(trials) == 2  # one MLflow run per trial: none started twice
    assert all(t.info.status == "FINISHED" for t in trials)
    again = next(t for t in trials if t.info.run_id == first.info.run_id)
    assert again.info.end_time == first.info.end_time  # the finished trial was not run again
    for trial_dir in (storage / "resumable" / "trials").iterdir():
        steps = [r["step"] for r in read_jsonl(trial_dir / "metrics.jsonl")]
        assert steps == [1, 2, 3]  # every step of every trial logged exactly once
    print(f"\nsweep driver killed with the trials at steps {sorted(trained.values())}; the resumed sweep finished "
          f"in {resumed:.1f} s")


def runs_of_or_empty(client: MlflowClient, experiment: str) -> list:
    if client.get_experiment_by_name(experiment) is None:
        return []
    return runs_of(client, experiment)[1]
