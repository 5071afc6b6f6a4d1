"""Registries own the names: a variant registered outside the package is valid YAML and trains."""
from __future__ import annotations

import pytest
import torch
import yaml

from pgnet.config import load_config
from pgnet.errors import ConfigError
from pgnet.losses import register_box_loss
from pgnet.registry import BOX_LOSSES, Registry
from pgnet.run.metrics_log import read_jsonl
from pgnet.train import train
from pgnet.typed_yaml import apply_overrides
from tests.support.configs import TINY_OVERRIDES


def test_a_box_loss_registered_outside_the_package_trains_one_step_selected_by_yaml(tmp_path, tiny_data):
    calls = []

    @register_box_loss("l1_corners")
    def l1_corners(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
        calls.append(len(pred))
        return (pred - target).abs().mean(-1)

    try:
        values = apply_overrides({}, [*TINY_OVERRIDES, f"data.root={tiny_data}", "train.max_steps=1"])
        values["loss"] = {"box": "l1_corners"}
        config_file = tmp_path / "l1.yaml"
        config_file.write_text(yaml.safe_dump(values))
        cfg = load_config(config_file)
        assert cfg.loss.box == "l1_corners"
        summary = train(cfg, tmp_path / "run", progress=False)
    finally:
        BOX_LOSSES.unregister("l1_corners")
    assert summary["step"] == 1
    assert len(calls) == 2 and all(n > 0 for n in calls)  # the main and the guidance head, on the real people
    record = read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    assert record["loss/box"] > 0 and record["loss/guide_box"] > 0
    with pytest.raises(ConfigError, match="loss.box='l1_corners' is not one of"):
        load_config(config_file)  # unregistered again: the YAML no longer validates


def test_a_name_is_registered_once():
    registry = Registry("thing", "section.thing", ())
    registry.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a", 2)
    assert registry.get("a") == 1 and registry.names() == ("a",)


def test_an_unknown_name_is_a_config_error_naming_the_key_and_the_choices():
    registry = Registry("thing", "section.thing", ())
    registry.register("a", 1)
    registry.register("b", 2)
    with pytest.raises(ConfigError, match=r"section.thing='c' is not one of a, b"):
        registry.get("c")


def test_a_registry_imports_its_locations_on_first_use(tmp_path, monkeypatch):
    (tmp_path / "extra_things.py").write_text(
        "from tests.pgnet.test_registry import LAZY\nLAZY.register('late', 42)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert LAZY.get("late") == 42


LAZY = Registry("lazy thing", "section.lazy", ("extra_things",))
