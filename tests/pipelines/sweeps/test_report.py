"""`pipelines.sweeps.report` against a real MLflow store written here the way a sweep writes it.

Every expected number is recomputed in the test from the histories it logged (best step
by argmax, the other stats read at that step), never taken from the report itself.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from PIL import Image

from pipelines.sweeps.report import ReportError, build_report, write_report

EXPERIMENT = "table3_ablation"
STATS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APS", "bbox/APM", "bbox/APL",
         "keypoints/AP", "keypoints/AP50", "keypoints/AP75")
STEPS_PER_EPOCH = 10

# trial id -> (backbone, norm, loss.box, optim.lr, status, keypoints/AP per evaluation (epoch 1, 2, ...))
TRIALS = {
    "t0": ("resnet18", "bn", "ciou", "0.001", "FINISHED", [0.30, 0.40, 0.35]),  # best epoch is not the last
    "t1": ("resnet18", "bn", "cdiou", "0.001", "FINISHED", [0.20, 0.45]),
    "t2": ("resnet18", "gn", "cdiou", "0.002", "FINISHED", [0.25, 0.33]),
    "t3": ("resnet18", "gn", "giou", "0.001", "KILLED", [0.50]),  # stopped early by ASHA, best of its cell
    "t4": ("resnet50", "bn", "cdiou", "0.001", "FINISHED", [0.10, 0.38, 0.52, 0.51]),
    "t5": ("resnet50", "gn", "cdiou", "0.001", "FAILED", [0.90]),  # failed: never counted
    "t6": ("resnet50", "gn", "ciou", "0.002", "FINISHED", [0.41, 0.44]),
    "t7": ("resnet34", "bn", "iou", "0.001", "KILLED", []),  # stopped before its first evaluation
}
UNDEFINED_STAT = ("t2", 2, "bbox/APS")  # COCOeval's -1 at the best evaluation of t2


def evaluations(trial: str) -> list[dict[str, float]]:
    """The stats logged at each evaluation of `trial`: random, except the keypoints/AP of TRIALS."""
    rng = np.random.default_rng(int(trial[1:]))
    evals = []
    for epoch, kp_ap in enumerate(TRIALS[trial][5], start=1):
        stats = {name: round(float(rng.uniform(0.05, 0.95)), 6) for name in STATS}
        stats["keypoints/AP"] = kp_ap
        if (trial, epoch) == UNDEFINED_STAT[:2]:
            stats[UNDEFINED_STAT[2]] = -1.0
        evals.append(stats)
    return evals


def log_trial(client: MlflowClient, experiment_id: str, parent: str, trial: str, start: int) -> str:
    backbone, norm, loss, lr, status, _ = TRIALS[trial]
    run = client.create_run(experiment_id, start_time=start, run_name=f"trial_{trial}",
                            tags={"pgnet.role": "trial", "mlflow.parentRunId": parent, "pgnet.trial_id": trial})
    run_id = run.info.run_id
    params = {"model.backbone": backbone, "model.norm": norm, "loss.box": loss, "optim.lr": lr,
              "model.guidance": "True", "train.epochs": "4", "tracking.run_name": f"trial_{trial}"}
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    metrics = []
    evals = evaluations(trial)
    last_step = STEPS_PER_EPOCH * max(1, len(evals))
    for step in range(1, last_step + 1):  # per-step training metrics, also at evaluation steps
        metrics += [Metric("loss", 5.0 / step, start + step, step), Metric("lr", 1e-3, start + step, step),
                    Metric("loss/hm", 2.0 / step, start + step, step), Metric("images_per_s", 40.0, start + step, step)]
    for epoch, stats in enumerate(evals, start=1):
        step = epoch * STEPS_PER_EPOCH
        metrics.append(Metric("epoch", float(epoch), start + step, step))
        metrics += [Metric(name, value, start + step, step) for name, value in stats.items()]
    client.log_batch(run_id, metrics=metrics)
    client.set_terminated(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, dict[str, str], str]:
    """(tracking URI, trial id -> run id, id of an older sweep's trial) of a store with two sweeps."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    # an older sweep of the same name, with a better trial than any of the latest sweep's
    old_parent = client.create_run(experiment_id, start_time=1_000, tags={"pgnet.role": "sweep"}).info.run_id
    old = client.create_run(experiment_id, start_time=1_100, tags={
        "pgnet.role": "trial", "mlflow.parentRunId": old_parent, "pgnet.trial_id": "old0"}).info.run_id
    client.log_batch(old, params=[Param("model.backbone", "resnet18"), Param("model.norm", "bn"),
                                  Param("loss.box", "cdiou"), Param("optim.lr", "0.001")],
                     metrics=[Metric("keypoints/AP", 0.99, 1_200, 10), Metric("bbox/AP", 0.98, 1_200, 10)])
    client.set_terminated(old, "FINISHED")
    client.set_terminated(old_parent, "FINISHED")

    parent = client.create_run(experiment_id, start_time=10_000, tags={"pgnet.role": "sweep"}).info.run_id
    runs = {trial: log_trial(client, experiment_id, parent, trial, 20_000 + 1_000 * i)
            for i, trial in enumerate(TRIALS)}
    client.set_terminated(parent, "FINISHED")
    client.create_experiment("empty_sweep")
    return uri, runs, old_parent


def best_evaluation(trial: str) -> tuple[int, dict[str, float]]:
    """(epoch, stats) of the evaluation with the highest keypoints/AP: the reference the report must match."""
    evals = evaluations(trial)
    best = int(np.argmax([e["keypoints/AP"] for e in evals]))
    return best + 1, evals[best]


def expected_cells(key_of) -> dict[tuple, tuple[str, int, int]]:
    """group key -> (best trial, counted trials, of which stopped early), over FINISHED/KILLED evaluated trials."""
    groups: dict[tuple, list[str]] = {}
    for trial, spec in TRIALS.items():
        if spec[4] in ("FINISHED", "KILLED") and spec[5]:
            groups.setdefault(key_of(spec), []).append(trial)
    return {key: (max(ts, key=lambda t: max(TRIALS[t][5])), len(ts), sum(TRIALS[t][4] == "KILLED" for t in ts))
            for key, ts in groups.items()}


def markdown_rows(table: str) -> list[list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def pct(value: float) -> str:
    return "n/a" if value == -1 else f"{100 * value:.1f}"


def test_table3_takes_each_cells_best_trial_at_its_best_evaluation(store):
    uri, runs, _ = store
    report = build_report(EXPERIMENT, uri)
    # the store's trials were logged before `model.neck` existed: placed at its default, and said so
    assert any("No `model.neck` param" in note and "model.neck=cffm" in note for note in report.notes)
    expected = expected_cells(lambda spec: (spec[0], "cffm", spec[1]))
    cells = {c.key: c for c in report.cells}
    assert set(cells) == set(expected)
    for key, (trial, count, stopped) in expected.items():
        cell = cells[key]
        epoch, stats = best_evaluation(trial)
        got = (cell.best.trial_id, cell.best.run_id, cell.trials, cell.stopped_early)
        assert got == (trial, runs[trial], count, stopped)
        assert (cell.best.step, cell.best.epoch) == (epoch * STEPS_PER_EPOCH, epoch)
        assert cell.best.values == pytest.approx(stats)  # every stat from the best step, none from another


def test_markdown_table_matches_the_logged_values(store):
    uri, _, _ = store
    report = build_report(EXPERIMENT, uri)
    rows = markdown_rows(report.table_markdown())
    header = report.table_markdown().splitlines()[0]
    assert [h.strip() for h in header.strip("|").split("|")] == [
        "Backbone", "Neck", "Norm", "AP_bbox", "AP50", "AP75", "APS", "APM", "APL", "kp AP", "best trial's loss",
        "other swept params", "best trial", "trials"]
    expected = expected_cells(lambda spec: (spec[0], spec[1]))
    # rows in the config's order of backbones, then necks, then norms
    assert [tuple(r[:3]) for r in rows] == [("resnet18", "cffm", "bn"), ("resnet18", "cffm", "gn"),
                                             ("resnet50", "cffm", "bn"), ("resnet50", "cffm", "gn")]
    rows = [[row[0], *row[2:]] for row in rows]  # the neck column dropped: the indices below as before
    for row in rows:
        trial, count, stopped = expected[(row[0], row[1])]
        epoch, stats = best_evaluation(trial)
        assert row[2:9] == [pct(stats[m]) for m in ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APS", "bbox/APM",
                                                    "bbox/APL", "keypoints/AP")]
        assert row[9] == TRIALS[trial][2]
        assert row[10] == f"optim.lr={TRIALS[trial][3]}"
        mark = "†" if TRIALS[trial][4] == "KILLED" else ""
        assert row[11] == f"{trial} (epoch {epoch}){mark}"
        assert row[12] == str(count) + (f" ({stopped} stopped early)" if stopped else "")
    gn = next(r for r in rows if r[:2] == ["resnet18", "gn"])
    assert gn[11].endswith("†") and "stopped early by the ASHA scheduler" in report.to_markdown()


def test_every_trial_table_lists_all_trials_with_their_status(store):
    uri, _, _ = store
    report = build_report(EXPERIMENT, uri)
    assert report.swept == ["loss.box", "model.backbone", "model.norm", "optim.lr"]  # not tracking.run_name
    rows = {r[0]: r for r in markdown_rows(report.trials_markdown())}
    assert set(rows) == set(TRIALS)  # the older sweep's trial is not in this report
    for trial, (backbone, norm, loss, lr, status, aps) in TRIALS.items():
        row = rows[trial]
        assert row[1:5] == [loss, backbone, norm, lr]
        if aps:
            epoch, stats = best_evaluation(trial)
            counted = "" if status in ("FINISHED", "KILLED") else " (not counted)"
            assert row[5:] == [status + counted, str(epoch), str(epoch * STEPS_PER_EPOCH), pct(stats["keypoints/AP"])]
        else:
            assert row[5:] == [f"{status} (no evaluation)", "—", "—", "—"]
    assert any("Not counted: 2 trial run(s) (1 FAILED, 1 KILLED)" in n for n in report.notes)
    assert any("holds 2 sweeps" in n for n in report.notes)


@pytest.mark.parametrize("rows, key_of", [
    (("loss.box",), lambda spec: (spec[2],)),
    ("loss.box", lambda spec: (spec[2],)),  # one key given as a string, as a command line may
    (("model.norm", "optim.lr"), lambda spec: (spec[1], spec[3])),
])
def test_rows_argument_groups_by_any_swept_params(store, rows, key_of):
    uri, _, _ = store
    report = build_report(EXPERIMENT, uri, rows=rows)
    expected = expected_cells(key_of)
    got = {c.key: (c.best.trial_id, c.trials, c.stopped_early) for c in report.cells}
    assert got == expected
    table = report.table_markdown()
    assert ("best trial's loss" in table) == ("loss.box" not in rows)
    if rows == ("loss.box",):  # the loss variants in the config's order (the iou trial has no evaluation)
        assert [r[0] for r in markdown_rows(table)] == ["giou", "ciou", "cdiou"]


def test_undefined_stat_is_na_in_markdown_and_minus_one_in_csv(store, tmp_path):
    uri, _, _ = store
    # grouped by trial-specific lr + loss, t2 is alone in its cell, and its best evaluation has APS = -1
    report = build_report(EXPERIMENT, uri, rows=("loss.box", "optim.lr"))
    row = next(r for r in markdown_rows(report.table_markdown()) if r[:2] == ["cdiou", "0.002"])
    assert row[2 + 3] == "n/a"
    report.to_csv(tmp_path / "t.csv")
    with (tmp_path / "t.csv").open() as f:
        line = next(r for r in csv.DictReader(f) if r["best_trial_id"] == "t2")
    assert float(line["bbox/APS"]) == -1.0


def test_a_loss_is_best_at_its_lowest(store):
    uri, _, _ = store
    report = build_report(EXPERIMENT, uri, metric="loss", rows=("model.backbone",))
    assert report.mode == "min"
    # the logged loss is 5 / step: each trial is best at its last step, each row's best trial is its longest
    last_step = {t: STEPS_PER_EPOCH * max(1, len(spec[5])) for t, spec in TRIALS.items()}
    assert {t.trial_id: t.step for t in report.trials} == last_step
    assert {c.key: c.best.trial_id for c in report.cells} == {("resnet18",): "t0", ("resnet34",): "t7",
                                                              ("resnet50",): "t4"}
    assert "the trial with the lowest `loss`" in report.to_markdown()
    assert markdown_rows(report.trials_markdown())[0][-1] == f"{5.0 / last_step['t4']:.4f}"  # as logged, not in %
    highest = build_report(EXPERIMENT, uri, metric="loss", rows=("model.backbone",), mode="max")
    assert {t.step for t in highest.trials} == {1}


def test_another_sweep_is_reported_when_asked(store):
    uri, _, old_parent = store
    report = build_report(EXPERIMENT, uri, sweep_run_id=old_parent)
    assert [(c.key, c.best.trial_id, c.best.values["keypoints/AP"]) for c in report.cells] == [
        (("resnet18", "cffm", "bn"), "old0", 0.99)]


def test_write_report_writes_markdown_csv_and_png(store, tmp_path):
    uri, runs, _ = store
    report = build_report(EXPERIMENT, uri)
    paths = write_report(report, tmp_path / "reports" / "table3")
    assert {p.name for p in paths.values()} == {"table3.md", "table3.csv", "table3.png"}
    assert paths["markdown"].read_text() == report.to_markdown()
    with paths["csv"].open(newline="") as f:
        lines = list(csv.DictReader(f))
    expected = expected_cells(lambda spec: (spec[0], spec[1]))
    assert len(lines) == len(expected)
    for line in lines:
        trial, count, stopped = expected[(line["model.backbone"], line["model.norm"])]
        _, stats = best_evaluation(trial)
        assert line["best_run_id"] == runs[trial] and int(line["trials"]) == count
        assert int(line["stopped_early"]) == stopped and line["best_status"] == TRIALS[trial][4]
        for name in STATS:  # full precision, as logged
            assert math.isclose(float(line[name]), stats[name], rel_tol=1e-12)
    with Image.open(paths["plot"]) as img:
        img.verify()
    with Image.open(paths["plot"]) as img:
        assert img.format == "PNG" and img.width >= 600 and img.height >= 400
        pixels = np.asarray(img.convert("L"))
        assert pixels.std() > 10  # something was drawn


def test_unknown_experiment_lists_the_existing_ones(store):
    uri, _, _ = store
    with pytest.raises(ReportError, match=r"'table3_ablaton' does not exist.*table3_ablation"):
        build_report("table3_ablaton", uri)


def test_experiment_without_trials_is_a_clear_error(store):
    uri, _, _ = store
    with pytest.raises(ReportError, match="has no trial runs"):
        build_report("empty_sweep", uri)


def test_missing_store_is_not_created(tmp_path):
    db = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(ReportError, match="no MLflow store"):
        build_report(EXPERIMENT, f"sqlite:///{db}")
    assert not db.exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"rows": ("model.depth",)}, "no trial has the param 'model.depth'.*model.backbone"),
    ({"metric": "keypoints/mAP"}, "no trial logged the metric 'keypoints/mAP'.*keypoints/AP"),
    ({"sweep_run_id": "0" * 32}, "is not a sweep run of 'table3_ablation'"),
    ({"mode": "maximum"}, "mode must be max or min, got 'maximum'"),
])
def test_bad_arguments_say_what_exists(store, kwargs, message):
    uri, _, _ = store
    with pytest.raises(ReportError, match=message):
        build_report(EXPERIMENT, uri, **kwargs)


def test_default_store_comes_from_the_environment(store, monkeypatch, tmp_path):
    uri, _, _ = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # no mlflow.db here: the environment's store must be used
    assert len(build_report(EXPERIMENT).cells) == 4


def test_report_command_prints_the_table_and_the_written_files(store, monkeypatch, tmp_path, capsys):
    from pipelines.cli import main
    uri, _, _ = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["report", "--experiment", EXPERIMENT, "--out", str(tmp_path / "t3")]) == 0
    out = capsys.readouterr().out
    assert build_report(EXPERIMENT, uri).to_markdown() in out
    written = [line.removeprefix("written: ") for line in out.splitlines() if line.startswith("written: ")]
    assert sorted(Path(p).name for p in written) == ["t3.csv", "t3.md", "t3.png"]
    assert all(Path(p).is_file() for p in written)
