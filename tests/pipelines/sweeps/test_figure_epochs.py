"""`pgnet report --figure epochs` (the paper's Figure 6) against a real MLflow store written as a sweep writes it,
and the figure6 sweep that produces its runs.

The runs' metric timestamps are placed here from chosen step and evaluation durations; every expected time
and AP is recomputed from those choices, never read back from the figure.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipelines.sweeps.dry_run import describe_sweep
from pipelines.sweeps.figure_epochs import build_figure, write_figure
from pipelines.sweeps.report_mlflow import ReportError
from pipelines.sweeps.spec import load_sweep
from pipelines.tracking.runs import ROLE_TAG, SWEEP_TAG, TRIAL_TAG, start_run
from tests.pipelines.sweeps.test_dry_run import trial_rows
from tests.support.cli import run_cli

STEPS_PER_EPOCH = 4
EVAL_SECONDS = 2.0  # each evaluation's time, after its epoch's last step
# stages -> (seconds per training step, key-point AP at the end of epoch 1, 2, 3)
TRIALS = {
    1: (1.0, [0.10, 0.20, 0.30]),  # the best at the last epoch
    2: (0.6, [0.15, 0.35, 0.30]),  # the best before the last
    3: (0.5, [0.25, 0.25, 0.05]),  # a tie: the earlier evaluation reached it first
}
SPEEDS = [5.0] + [40.0] * (3 * STEPS_PER_EPOCH - 1)  # images/s per step: a slow first step, median 40


def epoch_end(stages: int, epoch: int) -> float:
    """Seconds from the run's start to the evaluation of `epoch`."""
    return epoch * (STEPS_PER_EPOCH * TRIALS[stages][0] + EVAL_SECONDS)


def log_trial(client: MlflowClient, parent: str, stages: int) -> str:
    """A trial run as `pgnet sweep` opens it, with the step records and evaluations its hooks stream."""
    cfg = load_sweep("figure6").trial_config({"pipeline.stages": stages})
    run_id = start_run(client, cfg, run_name=f"trial S={stages}", parent_run_id=parent,
                       extra_tags={TRIAL_TAG: f"t{stages}", ROLE_TAG: "trial"})
    start = client.get_run(run_id).info.start_time
    step_seconds, aps = TRIALS[stages]
    metrics = []
    for epoch, ap in enumerate(aps, start=1):
        for k in range(1, STEPS_PER_EPOCH + 1):
            step = (epoch - 1) * STEPS_PER_EPOCH + k
            at = start + round(1000 * (epoch_end(stages, epoch - 1) + k * step_seconds))
            metrics += [Metric("epoch", epoch, at, step), Metric("loss", 5.0 / step, at, step),
                        Metric("images_per_s", SPEEDS[step - 1], at, step)]
        at = start + round(1000 * epoch_end(stages, epoch))
        step = epoch * STEPS_PER_EPOCH
        metrics += [Metric("epoch", epoch, at, step), Metric("keypoints/AP", ap, at, step)]
    client.log_batch(run_id, metrics=metrics)
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(tracking URI, stages -> run id) of a figure6 sweep; also an empty experiment and one without AP."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # new experiments keep their artifacts in ./mlruns: here, not in the checkout
        client = MlflowClient(uri)
        cfg = load_sweep("figure6").base_config()
        parent = start_run(client, cfg, run_name="figure6", extra_tags={ROLE_TAG: "sweep", SWEEP_TAG: str(root)})
        runs = {stages: log_trial(client, parent, stages) for stages in TRIALS}
        silent = start_run(client, cfg, parent_run_id=parent, extra_tags={TRIAL_TAG: "t9", ROLE_TAG: "trial"})
        client.set_terminated(silent, "FAILED")  # died before its first step: no curve
        client.set_terminated(parent, "FINISHED")
        client.create_experiment("empty")
        cfg.tracking.experiment = "no_ap"
        no_ap = start_run(client, cfg)
        client.log_metric(no_ap, "loss", 1.0, step=1)
        yield uri, runs, silent


def test_the_table_has_each_runs_best_ap_and_its_times(store):
    uri, runs, silent = store
    figure = build_figure("figure6", uri)
    assert [(r.stages, r.run_id) for r in figure.runs] == [(s, runs[s]) for s in (1, 2, 3)]
    for run in figure.runs:
        aps = TRIALS[run.stages][1]
        best_epoch = aps.index(max(aps)) + 1  # the first of equal bests
        expected = [f"t{run.stages}", run.stages, "1f1b", "4", 3.0, aps[-1], max(aps), best_epoch,
                    pytest.approx(epoch_end(run.stages, 3)), pytest.approx(epoch_end(run.stages, best_epoch)),
                    40.0, "FINISHED"]
        assert figure.rows()[figure.runs.index(run)] == expected
        # the step losses sit at fractions of their epoch: the k-th of 4 steps of epoch e at e - 1 + k/4
        assert run.loss.epochs == pytest.approx([s / STEPS_PER_EPOCH for s in range(1, 13)])
        assert run.loss.seconds[-1] == pytest.approx(epoch_end(run.stages, 3) - EVAL_SECONDS)
    assert any(silent in note for note in figure.notes)  # left out, and said so
    rows = [line.split("|")[1:-1] for line in figure.table_markdown().splitlines()[2:]]
    assert [[c.strip() for c in row] for row in rows][1] == [
        "t2", "2", "1f1b", "4", "3", "30.0", "35.0", "2", "13.2", "8.8", "40.0", "FINISHED"]


def test_write_figure_gives_markdown_csv_and_a_png(store, tmp_path):
    uri, runs, _ = store
    paths = write_figure(build_figure("figure6", uri), tmp_path / "out" / "figure6")
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![Figure 6](figure6.png)" in paths["markdown"].read_text()
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["run_id"], r["S"]) for r in rows] == [(runs[s], str(s)) for s in (1, 2, 3)]
    s3 = rows[2]
    assert float(s3["best kp AP"]) == 0.25 and float(s3["best at epoch"]) == 1
    assert float(s3["time to best (s)"]) == pytest.approx(epoch_end(3, 1))
    assert float(s3["wall time (s)"]) == pytest.approx(epoch_end(3, 3))


@pytest.mark.parametrize("experiment, message", [
    ("empty", "experiment 'empty' has no runs"),
    ("no_ap", "logged 'keypoints/AP' (metrics there: loss)"),
    ("missing", "MLflow experiment 'missing' does not exist"),
])
def test_an_experiment_without_curves_is_a_clear_error(store, experiment, message):
    with pytest.raises(ReportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_figure(experiment, store[0])


def test_the_cli_prints_the_table_and_writes_the_files(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[0])
    code, out, _ = run_cli(capsys, "report", "--figure", "epochs", "--experiment", "figure6",
                           "--out", tmp_path / "fig")
    assert code == 0
    assert out.startswith("| run | S | schedule |")
    assert all(Path(tmp_path / f"fig{ext}").is_file() for ext in (".md", ".csv", ".png"))
    code, _, err = run_cli(capsys, "report", "--figure", "epochs", "--experiment", "empty")
    assert code == 2 and "has no runs" in err


def test_the_figure6_sweep_trains_one_model_on_1_2_and_3_stages():
    sweep = load_sweep("figure6")
    text = describe_sweep(sweep)
    assert trial_rows(text) == ["pipeline.stages=1", "pipeline.stages=2", "pipeline.stages=3"]
    configs = [sweep.trial_config({"pipeline.stages": s}).flat() for s in (1, 2, 3)]
    # the same model, data, epochs, batch and seed: only the stage count differs
    assert all({k for k in c if c[k] != configs[0][k]} == {"pipeline.stages"} for c in configs[1:])
    assert configs[0]["train.eval_every"] == 1 and sweep.max_concurrent_trials == 1
    # Ray is sized for the largest trial, not the first
    assert sweep.largest_trial_config().pipeline.stages == 3
    assert "resources per trial: 3 Ray Train workers (pipeline.stages 3 x pipeline.data_parallel 1)" in text
