"""Sweep files are validated before anything starts: clear errors that name the key and the file."""
from __future__ import annotations

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


def test_shipped_sweeps_cover_the_papers_dimensions():
    table3 = load_sweep("table3_ablation")
    assert set(table3.search_space["model.norm"]["grid"]) >= {"gn", "syncbn", "cbn"}
    assert set(table3.search_space["model.backbone"]["grid"]) == {"resnet50", "resnet101"}
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


def test_a_missing_sweep_lists_the_bundled_ones():
    with pytest.raises(ConfigError, match="bundled sweeps: .*smoke"):
        load_sweep("no_such_sweep")
