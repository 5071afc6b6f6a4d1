"""`pgnet report --paper table3`: the paper's Table 3 as package data, and a sweep laid out beside it.

The trials are written to a real MLflow store the way a sweep tags them. Every expected number is typed
here: the paper's from its text (../shared/seed/PGNet-paper.txt, Table 3), the measured ones as logged.
"""
from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from PIL import Image

from pgnet.errors import ConfigError
from pipelines.sweeps.paper_report import build_paper_report
from pipelines.sweeps.paper_table import PAPER_DIR, load_paper_table, paper_table_names
from pipelines.tracking.runs import PARENT_TAG, ROLE_TAG, TRIAL_TAG
from tests.support.cli import run_cli

EXPERIMENT = "table3_ablation"
BBOX = ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APS", "bbox/APM", "bbox/APL")
# Table 3 as printed: row label -> APbbox, AP50, AP75, APS, APM, APL (%)
PAPER = {
    "ResNet50+FPN / GN": (37.8, 59.0, 40.8, 22.3, 41.2, 48.4),
    "ResNet50+FPN / syncGN": (37.7, 58.5, 41.1, 22.3, 40.2, 48.9),
    "ResNet50+FPN / CBN": (37.8, 59.8, 40.3, 22.5, 40.5, 49.1),
    "ResNet101+FPN / GN": (39.3, 60.6, 42.7, 22.5, 42.5, 48.8),
    "ResNet101+FPN / syncGN": (39.3, 59.8, 43.0, 22.3, 42.9, 51.6),
    "ResNet101+FPN / CBN": (39.2, 60.0, 42.2, 22.3, 42.6, 51.8),
    "ResNet50+proposed / GN": (39.3, 60.7, 42.6, 22.5, 43.2, 48.1),
    "ResNet50+proposed / syncGN": (39.3, 59.8, 43.5, 23.4, 43.7, 51.9),
    "ResNet50+proposed / CBN": (39.4, 59.8, 43.2, 23.1, 42.9, 52.6),
}
GROUPS = ["ResNet50+FPN", "ResNet101+FPN", "ResNet50+proposed (CFFM)"]
NORMS = ["GN", "syncGN (SyncBN)", "CBN"]

# trial id -> (model.backbone, model.neck (None: logged before that param existed), model.norm, status,
#              one dict of stats per evaluation (epochs 1, 2, ...))
TRIALS = {
    "a": ("resnet50", "fpn", "gn", "FINISHED", [
        {"keypoints/AP": 0.30, "bbox/AP": 0.050},
        {"keypoints/AP": 0.40, "bbox/AP": 0.123, "bbox/AP50": 0.301, "bbox/AP75": 0.102, "bbox/APS": 0.011,
         "bbox/APM": 0.152, "bbox/APL": 0.204}]),  # the best evaluation: the row's values
    "b": ("resnet50", "fpn", "gn", "FINISHED", [{"keypoints/AP": 0.35, "bbox/AP": 0.90}]),  # lower keypoints/AP
    "c": ("resnet101", "fpn", "syncbn", "KILLED", [  # stopped early by ASHA: counts
        {"keypoints/AP": 0.20, "bbox/AP50": 0.10},
        {"keypoints/AP": 0.50, "bbox/AP": 0.400, "bbox/AP50": 0.6123},
        {"keypoints/AP": 0.45, "bbox/AP50": 0.70}]),
    "d": ("resnet50", None, "cbn", "FINISHED", [{"keypoints/AP": 0.25, "bbox/AP": 0.394, "bbox/APS": -1.0}]),
    "e": ("resnet50", "cffm", "gn", "FAILED", [{"keypoints/AP": 0.60, "bbox/AP": 0.60}]),
    "f": ("resnet18", "cffm", "bn", "FINISHED", [{"keypoints/AP": 0.10, "bbox/AP": 0.10}]),  # not in Table 3
}


def log_trial(client: MlflowClient, experiment_id: str, parent: str, trial: str, start: int) -> str:
    """A trial run as `pgnet sweep` writes one: its tags, every config key as a param, evaluations by step."""
    backbone, neck, norm, status, evaluations = TRIALS[trial]
    run_id = client.create_run(experiment_id, start_time=start, run_name=f"trial_{trial}", tags={
        ROLE_TAG: "trial", PARENT_TAG: parent, TRIAL_TAG: trial}).info.run_id
    params = {"model.backbone": backbone, "model.norm": norm, "loss.box": "cdiou"}
    if neck is not None:
        params["model.neck"] = neck
    metrics = []
    for epoch, stats in enumerate(evaluations, start=1):
        step = 10 * epoch
        metrics += [Metric("epoch", float(epoch), start + step, step)]
        metrics += [Metric(name, value, start + step, step) for name, value in stats.items()]
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()], metrics=metrics)
    client.set_terminated(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    parent = client.create_run(experiment_id, start_time=1_000, tags={ROLE_TAG: "sweep"}).info.run_id
    for i, trial in enumerate(TRIALS):
        log_trial(client, experiment_id, parent, trial, 2_000 + 1_000 * i)
    client.set_terminated(parent, "FINISHED")
    return uri


def markdown_rows(table: str) -> list[list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_the_package_data_holds_table3_as_printed_with_its_sources():
    table = load_paper_table("table3")
    assert "table3" in paper_table_names()
    assert [g.label for g in table.groups] == ["ResNet50+FPN", "ResNet101+FPN", "ResNet50+proposed"]
    assert [g.shown for g in table.groups] == GROUPS
    assert list(table.columns) == list(BBOX) and table.measured_only == ("keypoints/AP",)
    assert table.keys == ("model.backbone", "model.neck", "model.norm")
    got = {f"{g.label} / {r.label}": tuple(r.values[m].value for m in BBOX) for g, r in table.rows}
    assert got == PAPER  # in the printed order too
    assert list(got) == list(PAPER)
    configs = [tuple(r.params[k] for k in table.keys) for _, r in table.rows]
    assert configs == [(b, n, norm) for b, n in (("resnet50", "fpn"), ("resnet101", "fpn"), ("resnet50", "cffm"))
                       for norm in ("gn", "syncbn", "cbn")]
    group, row = table.rows[4]
    ap50 = row.values["bbox/AP50"]
    assert (group.label, row.label, row.shown) == ("ResNet101+FPN", "syncGN", "syncGN (SyncBN)")
    assert ap50.value == 59.8
    assert str(ap50.source) == "PGNet, Table 3, row 'ResNet101+FPN / syncGN', column 'AP50bbox'"


def test_markdown_lays_the_sweep_out_as_the_papers_table(store):
    report = build_paper_report(EXPERIMENT, "table3", store, metric="keypoints/AP")
    header, _, *rows = markdown_rows(report.table_markdown())
    assert header == ["Backbone", "Norm", "APbbox", "AP50bbox", "AP75bbox", "APSbbox", "APMbbox", "APLbbox",
                      "keypoints/AP", "best trial", "trials"]
    assert [r[0] for r in rows] == [f"**{GROUPS[0]}**", "", "", f"**{GROUPS[1]}**", "", "", f"**{GROUPS[2]}**", "", ""]
    assert [r[1] for r in rows] == NORMS * 3
    by_row = {f"{g.label} / {r.label}": row for (g, r), row in zip(report.table.rows, rows)}
    # ResNet50+FPN / GN: trial a at its best evaluation (epoch 2), not b (lower keypoints/AP), not a's epoch 1
    assert by_row["ResNet50+FPN / GN"][2:] == [
        "12.3 / 37.8 (−25.5)", "30.1 / 59.0 (−28.9)", "10.2 / 40.8 (−30.6)", "1.1 / 22.3 (−21.2)",
        "15.2 / 41.2 (−26.0)", "20.4 / 48.4 (−28.0)", "40.0 / —", "a (epoch 2)", "2"]
    # ResNet101+FPN / syncGN: trial c, stopped early, at epoch 2; AP50 61.23 against the paper's 59.8
    c = by_row["ResNet101+FPN / syncGN"]
    assert c[2:4] == ["40.0 / 39.3 (+0.7)", "61.2 / 59.8 (+1.4)"] and c[4] == "— / 43.0"
    assert c[8:] == ["50.0 / —", "c (epoch 2)†", "1"]
    # trial d has no model.neck param: it is the CFFM row; COCOeval's -1 is n/a
    d = by_row["ResNet50+proposed / CBN"]
    assert d[2] == "39.4 / 39.4 (+0.0)" and d[5] == "n/a / 23.1" and d[9] == "d (epoch 1)"
    # trial e failed: its row was run but has no counted trial
    assert by_row["ResNet50+proposed / GN"][2:] == ["not counted"] * 7 + ["—", "1 (0 counted)"]
    for label in ("ResNet50+FPN / syncGN", "ResNet50+FPN / CBN", "ResNet101+FPN / GN", "ResNet101+FPN / CBN",
                  "ResNet50+proposed / syncGN"):
        assert by_row[label][2:] == ["not run"] * 7 + ["—", "0"]
    text = report.to_markdown()
    assert "Not counted: trial e of ResNet50+proposed / GN, FAILED" in text
    assert "Not in Table 3: trial f (model.backbone=resnet18, model.neck=cffm, model.norm=bn, FINISHED)" in text
    assert "No `model.neck` param (logged before the key existed), so counted at its default model.neck=cffm: " \
           "trial(s) d." in text
    assert "4 of 9 rows measured" not in text and "3 of 9 rows measured" in text


def test_csv_has_measured_paper_and_difference_in_columns_of_their_own(store, tmp_path):
    report = build_paper_report(EXPERIMENT, "table3", store, metric="keypoints/AP")
    with report.to_csv(tmp_path / "t3.csv").open(newline="") as f:
        lines = list(csv.DictReader(f))
    assert [(r["group"], r["row"]) for r in lines] == [tuple(k.split(" / ")) for k in PAPER]
    by_row = {f"{r['group']} / {r['row']}": r for r in lines}
    c = by_row["ResNet101+FPN / syncGN"]
    assert (c["model.backbone"], c["model.neck"], c["model.norm"], c["state"]) == ("resnet101", "fpn", "syncbn",
                                                                                   "measured")
    assert float(c["bbox/AP50 measured (%)"]) == pytest.approx(61.23)
    assert float(c["bbox/AP50 paper (%)"]) == 59.8
    assert float(c["bbox/AP50 diff (%)"]) == pytest.approx(61.23 - 59.8)
    assert c["bbox/AP75 measured (%)"] == "" and c["bbox/AP75 paper (%)"] == "43.0" and c["bbox/AP75 diff (%)"] == ""
    assert c["keypoints/AP paper (%)"] == "" and float(c["keypoints/AP measured (%)"]) == pytest.approx(50.0)
    assert c["best_trial_id"] == "c" and c["best_step"] == "20"
    assert c["paper_source"] == "PGNet, Table 3, row 'ResNet101+FPN / syncGN'"
    assert by_row["ResNet50+proposed / CBN"]["bbox/APS measured (%)"] == "n/a"
    assert by_row["ResNet50+proposed / GN"]["state"] == "not counted"
    not_run = by_row["ResNet50+FPN / CBN"]
    assert not_run["state"] == "not run" and not_run["bbox/AP measured (%)"] == "" and not_run["trials"] == "0"
    assert float(not_run["bbox/AP paper (%)"]) == 37.8


def test_plot_is_a_png_with_something_drawn(store, tmp_path):
    path = build_paper_report(EXPERIMENT, "table3", store, metric="keypoints/AP").plot(tmp_path / "t3.png")
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= 600 and img.height >= 400
        assert np.asarray(img.convert("L")).std() > 10


def bundled_table() -> dict:
    return yaml.safe_load((PAPER_DIR / "table3.yaml").read_text())


def broken(change) -> dict:
    data = bundled_table()
    change(data)
    return data


@pytest.mark.parametrize("data, message", [
    (broken(lambda d: d["groups"][1]["rows"][2]["values"].pop()),
     r"groups\[1\]\.rows\[2\]\.values: 5 numbers, expected 6 \(one per column: APbbox, AP50bbox"),
    (broken(lambda d: d["groups"][0]["rows"][0]["values"].__setitem__(1, "59,0")),
     r"groups\[0\]\.rows\[0\]\.values \(AP50bbox\): '59,0' is not a percentage"),
    (broken(lambda d: d["groups"][2]["rows"][0].update(value="syncbn")),
     r"rows 'ResNet50\+proposed / GN' and 'ResNet50\+proposed / syncGN' stand for the same config"),
    (broken(lambda d: d["groups"][0].update(colour="red")), r"groups\[0\]: unknown key 'colour'"),
    (broken(lambda d: d.pop("columns")), r"the file: missing key 'columns'"),
    (broken(lambda d: d["groups"][1]["params"].pop("model.neck")), r"groups\[1\]\.params: keys \['model.backbone'\]"),
    ([1, 2], r"the file: expected a mapping, got list"),
], ids=["values-short", "value-not-number", "same-config-twice", "unknown-key", "missing-key", "group-keys-differ",
        "not-a-mapping"])
def test_a_malformed_table_file_is_an_error_naming_the_key(tmp_path, data, message):
    path = tmp_path / "table9.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: ") + message):
        load_paper_table(path)


def test_invalid_yaml_and_unknown_tables_are_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("groups: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_paper_table(path)
    with pytest.raises(ConfigError, match=r"no paper table 'table4' \(bundled: table3\)"):
        load_paper_table("table4")


def test_report_command_with_paper_writes_markdown_csv_and_png(store, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    code, out, _ = run_cli(capsys, "report", "--experiment", EXPERIMENT, "--paper", "table3", "--metric",
                           "keypoints/AP", "--out", tmp_path / "t3")
    assert code == 0
    markdown = build_paper_report(EXPERIMENT, "table3", store, metric="keypoints/AP").to_markdown()
    assert markdown in out and "| **ResNet50+FPN** | GN | 12.3 / 37.8 (−25.5) |" in out
    written = sorted(line.removeprefix("written: ") for line in out.splitlines() if line.startswith("written: "))
    assert written == [str(tmp_path / f"t3.{ext}") for ext in ("csv", "md", "png")]
    assert (tmp_path / "t3.md").read_text() == markdown
    assert (tmp_path / "t3.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_rows_are_picked_by_the_papers_first_column_by_default(store):
    default = build_paper_report(EXPERIMENT, "table3", store)
    assert default.report.metric == "bbox/AP"  # Table 3's APbbox
    assert build_paper_report(EXPERIMENT, "table3", store, metric="bbox/AP").to_markdown() == default.to_markdown()


def test_report_command_rejects_an_unknown_paper_table(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(capsys, "report", "--experiment", EXPERIMENT, "--paper", "table4")
    assert exit_.value.code == 2
    assert re.search(r"argument --paper: invalid choice: 'table4' \(choose from '?table3'?\)", capsys.readouterr().err)
