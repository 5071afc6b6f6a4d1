"""Sweep files are validated before anything starts: clear errors that name the key and the file."""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from ray import tune

from pgnet.config import ConfigError
from pipelines.sweeps.spec import SWEEP_DIR, load_sweep

BUNDLED = sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_sweeps_load_and_make_valid_trial_configs(name):
    sweep = load_sweep(name)
    assert sweep.total_trials() >= 1
    for params in sweep.corner_params():
        cfg = sweep.trial_config(params)
        assert cfg.pipeline.stages >= 1  # every trial is a pipeline-parallel run
        assert cfg.train.eval_every == 1  # so every report carries the metric


# The paper's Table 3 (seed/PGNet-paper.txt, section 4.2): three row groups x three norms ("syncGN": SyncBN).
PAPER_CELLS = {(backbone, neck, norm) for backbone, neck in
               (("resnet50", "fpn"), ("resnet101", "fpn"), ("resnet50", "cffm")) for norm in ("gn", "syncbn", "cbn")}


def cells(sweep, keys=("model.backbone", "model.neck", "model.norm")) -> list[tuple]:
    """Every trial of a grid sweep, as the values of `keys` in its config."""
    grid = {k: spec["grid"] for k, spec in sweep.search_space.items()}
    trials = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    return [tuple(sweep.trial_config(t).flat()[k] for k in keys) for t in trials]


@pytest.mark.parametrize("name", ["table3_ablation", "table3_synthetic"])
def test_table3_sweeps_run_exactly_the_papers_cells(name):
    sweep = load_sweep(name)
    found = cells(sweep)
    assert sorted(found) == sorted(PAPER_CELLS) and sweep.total_trials() == 9
    assert {sweep.trial_config(p).loss.box for p in sweep.corner_params()} == {"cdiou"}  # the loss is fixed


def test_the_loss_file_adds_the_loss_dimension_to_the_nine_cells():
    sweep = load_sweep("table3_losses")
    found = cells(sweep, ("model.backbone", "model.neck", "model.norm", "loss.box"))
    assert sorted(found) == sorted((*cell, loss) for cell in PAPER_CELLS for loss in ("giou", "diou", "cdiou"))
    table3 = load_sweep("table3_ablation")
    assert sweep.base == table3.base and sweep.trial_config(sweep.corner_params()[0]).data.root == "/data/coco"


def test_shipped_sweeps_cover_the_papers_dimensions():
    assert set(load_sweep("loss_variants").search_space["loss.box"]["grid"]) == {"iou", "giou", "diou", "ciou", "cdiou"}
    assert load_sweep("smoke").search_space["loss.box"]["grid"] == ["iou", "giou", "diou", "ciou", "cdiou"]
    assert load_sweep("lr_guidance_optuna").search.name == "optuna"


def test_param_space_uses_tune_domains():
    space = load_sweep("lr_guidance_optuna").param_space()
    assert isinstance(space["optim.lr"], tune.search.sample.Float)
    assert isinstance(space["model.guidance"], tune.search.sample.Categorical)
    grid = load_sweep("smoke").param_space()["loss.box"]
    assert grid == {"grid_search": ["iou", "giou", "diou", "ciou", "cdiou"]}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


GOOD = """
name: t
base: cpu_small
overrides: {pipeline.stages: 2}
search_space:
  loss.box: {grid: [iou, giou]}
"""


def test_the_sweep_the_bad_ones_start_from_is_valid(tmp_path):
    assert load_sweep(write(tmp_path, GOOD)).total_trials() == 2


@pytest.mark.parametrize("text, message", [
    (GOOD + "colour: red\n", "unknown key 'colour'"),
    (GOOD + "scheduler: {name: asha, patience: 3}\n", "unknown key 'scheduler.patience'"),
    (GOOD.replace("loss.box", "loss.boxx"), "'loss.boxx' is not a training-config key"),
    (GOOD.replace("[iou, giou]", "[iou, bogus]"), "loss.box='bogus'"),
    (GOOD.replace("{grid: [iou, giou]}", "{normal: [0, 1]}"), "search_space.loss.box must be one of"),
    (GOOD + "search: {name: optuna}\n", "optuna samples"),
    (GOOD + "scheduler: {name: hyperband}\n", "scheduler.name must be one of"),
    (GOOD + "mode: maximum\n", "mode must be max or min"),
    (GOOD.replace("base: cpu_small", "base: nowhere.yaml"), "config file 'nowhere.yaml' not found"),
    ("name: t\nbase: cpu_small\n", "'search_space' is required"),
    ("name: [unclosed\n", "not valid YAML"),
    (GOOD.replace("search_space:\n  loss.box: {grid: [iou, giou]}", "search_space:\n  optim.lr: {loguniform: [0, 1]}"),
     "needs low > 0"),
    (GOOD.replace("{pipeline.stages: 2}", "{train.batch_size: 7, pipeline.stages: 2, pipeline.microbatches: 4}"),
     "divisible"),
    (GOOD.replace("overrides: {pipeline.stages: 2}\n", ""), "pipeline.stages=0 (the single-process trainer)"),
    (GOOD + "metric: keypoints/APX\n", "metric 'keypoints/APX' is not reported by a trial; use one of keypoints/AP"),
    (GOOD + "num_samples: '2'\n", "'num_samples' must be int"),
    (GOOD + "scheduler: {name: asha, grace_period: 1.5}\n", "'scheduler.grace_period' must be int"),
    (GOOD.replace("{pipeline.stages: 2}", "[train.epochs=2]"), "'overrides' must be a mapping"),
    (GOOD + "source: elsewhere.yaml\n", "unknown key 'source'"),
    ("- name: t\n", "a sweep file must be a YAML mapping"),
])
def test_bad_sweep_files_are_refused_with_the_key_and_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert message in str(err.value)
    if "not found" not in message:
        assert str(path) in str(err.value)


GROUPED = GOOD.replace("search_space:\n", """search_space:
  arch: {grid: [{model.backbone: resnet34, model.neck: fpn}, {model.backbone: resnet18, model.neck: cffm}]}
""")


def test_a_group_sets_its_keys_together(tmp_path):
    sweep = load_sweep(write(tmp_path, GROUPED))
    assert sweep.total_trials() == 4
    assert sorted(cells(sweep, ("model.backbone", "model.neck", "loss.box"))) == [
        ("resnet18", "cffm", "giou"), ("resnet18", "cffm", "iou"), ("resnet34", "fpn", "giou"),
        ("resnet34", "fpn", "iou")]


@pytest.mark.parametrize("old, new, message", [
    ("model.neck: fpn}", "model.nek: fpn}", "(model.nek are not)"),
    ("arch:", "model.neck:", "search_space.model.neck sets keys together"),
    ("{model.backbone: resnet18, model.neck: cffm}", "resnet18", "a group's values are all non-empty mappings"),
    ("model.neck: fpn}", "model.neck: bifpn}", "model.neck='bifpn' is not one of cffm, fpn"),
])
def test_bad_groups_are_refused(tmp_path, old, new, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_sweep(write(tmp_path, GROUPED.replace(old, new)))


def test_a_sweep_extends_another_key_by_key(tmp_path):
    (tmp_path / "parent.yaml").write_text(GOOD.replace("{pipeline.stages: 2}", "{pipeline.stages: 2, train.epochs: 5}"))
    child = tmp_path / "child.yaml"
    child.write_text("extends: parent.yaml\nname: child\noverrides: {train.epochs: 2}\n"
                     "search_space: {model.norm: {grid: [gn, bn]}}\n")
    sweep = load_sweep(child)
    assert sweep.name == "child" and sweep.total_trials() == 4  # loss.box x model.norm
    assert sweep.overrides["tracking.experiment"] == "child"  # its own MLflow experiment
    cfg = sweep.trial_config(sweep.corner_params()[0])
    assert (cfg.train.epochs, cfg.pipeline.stages) == (2, 2)  # the child's value, the parent's
    (tmp_path / "parent.yaml").write_text("extends: child.yaml\n")
    with pytest.raises(ConfigError, match="makes a cycle"):
        load_sweep(child)


def test_a_missing_sweep_lists_the_bundled_ones():
    with pytest.raises(ConfigError, match="bundled sweeps: .*smoke"):
        load_sweep("no_such_sweep")
