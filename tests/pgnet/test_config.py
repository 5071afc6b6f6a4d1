"""Tests of pgnet.config: YAML loading, `--set` overrides, validation errors and the bundled configs.

Every error must name the offending key (and, for files, the file), so a typo never falls back to a default.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from pgnet.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    load_config,
    resolve_config_path,
    save_config,
)
from pgnet.registry import ALL as REGISTRIES
from pgnet.registry import BACKBONES, NORMS

BUNDLED = sorted(CONFIG_DIR.glob("*.yaml"))


def write_yaml(path: Path, values) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


# --- loading --------------------------------------------------------------------------------------

def test_yaml_file_sets_values_and_keeps_defaults(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {
        "model": {"backbone": "resnet34", "norm": "gn", "guidance": False},
        "data": {"input_size": [256, 192], "augment": {"scale": [0.5, 1.5]}},
        "optim": {"lr": 0.01, "milestones": [0.5, 0.8]},
    })
    cfg = load_config(path)
    assert (cfg.model.backbone, cfg.model.norm, cfg.model.guidance) == ("resnet34", "gn", False)
    assert cfg.data.input_size == (256, 192) and isinstance(cfg.data.input_size, tuple)
    assert cfg.data.augment.scale == (0.5, 1.5)
    assert cfg.optim.milestones == (0.5, 0.8)
    # Untouched values are the dataclass defaults.
    assert cfg.model.neck_channels == Config().model.neck_channels
    assert cfg.train == Config().train


def test_empty_file_and_no_file_are_the_defaults(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == Config().validate()
    assert load_config(None) == Config()


def test_saved_config_loads_back_equal(tmp_path):
    cfg = load_config(None, ["model.norm=cbn", "data.input_size=[96, 64]", "optim.milestones=[0.25]",
                             "model.pretrained=/weights/r18.pth", "pipeline.balance=[3, 4]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_integers_in_yaml_become_floats_for_float_fields(tmp_path):
    cfg = load_config(write_yaml(tmp_path / "c.yaml", {"optim": {"lr": 1, "gamma": 0}}))
    assert type(cfg.optim.lr) is float and cfg.optim.lr == 1.0
    assert type(cfg.optim.gamma) is float


def test_not_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml.*not valid YAML"):
        load_config(path)


def test_a_list_at_the_top_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write_yaml(tmp_path / "list.yaml", [1, 2]))


# --- overrides ----------------------------------------------------------------------------------

@pytest.mark.parametrize("override, key, expected, kind", [
    ("optim.lr=0.01", "optim.lr", 0.01, float),
    ("optim.lr=1e-3", "optim.lr", 0.001, float),  # YAML 1.1 reads 1e-3 as text
    ("optim.lr=2", "optim.lr", 2.0, float),
    ("train.epochs=3", "train.epochs", 3, int),
    ("data.input_size=[96, 64]", "data.input_size", (96, 64), tuple),
    ("optim.milestones=[0.5, 0.75, 0.9]", "optim.milestones", (0.5, 0.75, 0.9), tuple),
    ("data.augment.scale=[0.8, 1.2]", "data.augment.scale", (0.8, 1.2), tuple),
    ("model.guidance=false", "model.guidance", False, bool),
    ("eval.flip_test=true", "eval.flip_test", True, bool),
    ("model.pretrained=null", "model.pretrained", None, type(None)),
    ("model.pretrained=/w/resnet18.pth", "model.pretrained", "/w/resnet18.pth", str),
    ("pipeline.balance=[2, 3, 4]", "pipeline.balance", (2, 3, 4), tuple),
    ("model.norm=gn", "model.norm", "gn", str),
])
def test_set_override_types(override, key, expected, kind):
    cfg = load_config(None, [override])
    value = cfg.flat()[key]  # flat() holds lists where the config holds tuples
    section, name = key.rsplit(".", 1)
    obj = cfg
    for part in section.split("."):
        obj = getattr(obj, part)
    actual = getattr(obj, name)
    assert type(actual) is kind
    assert actual == expected
    assert value == (list(expected) if isinstance(expected, tuple) else expected)


def test_override_wins_over_the_file_and_keeps_its_other_values(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"model": {"norm": "gn", "head_channels": 32}})
    cfg = load_config(path, ["model.norm=frozenbn"])
    assert cfg.model.norm == "frozenbn" and cfg.model.head_channels == 32


def test_overrides_as_a_dict_and_the_input_is_not_changed():
    values = {"model": {"norm": "gn"}}
    out = apply_overrides(values, {"model.norm": "bn", "train.seed": 5})
    assert out == {"model": {"norm": "bn"}, "train": {"seed": 5}}
    assert values == {"model": {"norm": "gn"}}
    assert load_config(None, {"train.seed": 5}).train.seed == 5


def test_value_with_equals_sign_keeps_the_rest():
    cfg = load_config(None, ["tracking.run_name=a=b"])
    assert cfg.tracking.run_name == "a=b"


def test_set_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value.*'model.norm'"):
        load_config(None, ["model.norm"])


def test_override_below_a_value_is_an_error(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"model": {"norm": "gn"}})
    with pytest.raises(ConfigError, match="model.norm.groups"):
        load_config(path, ["model.norm.groups=4"])


# --- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("values, key", [
    ({"model": {"nrom": "gn"}}, "model.nrom"),
    ({"modle": {"norm": "gn"}}, "modle"),
    ({"data": {"synthetic": {"train_imgs": 5}}}, "data.synthetic.train_imgs"),
    ({"train": {"epochs": 2, "lr": 0.1}}, "train.lr"),
])
def test_unknown_key_names_the_key_and_the_file(tmp_path, values, key):
    path = write_yaml(tmp_path / "typo.yaml", values)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"'{key}'" in message
    assert str(path) in message
    assert "unknown key" in message


def test_unknown_key_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"known keys under 'model': .*\bnorm\b"):
        load_config(write_yaml(tmp_path / "typo.yaml", {"model": {"nrom": "gn"}}))


def test_unknown_override_key_names_the_key_and_the_file(tmp_path):
    path = write_yaml(tmp_path / "base.yaml", {"model": {"norm": "gn"}})
    with pytest.raises(ConfigError) as err:
        load_config(path, ["optim.learning_rate=0.1"])
    assert "'optim.learning_rate'" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("override, key", [
    ("train.epochs=two", "train.epochs"),
    ("train.epochs=1.5", "train.epochs"),
    ("model.neck_channels=true", "model.neck_channels"),
    ("model.guidance=3", "model.guidance"),
    ("model.guidance=yes please", "model.guidance"),
    ("optim.lr=fast", "optim.lr"),
    ("optim.lr=true", "optim.lr"),
    ("optim.lr=[0.1]", "optim.lr"),
    ("model.norm=3", "model.norm"),
    ("model.pretrained=[1, 2]", "model.pretrained"),
    ("data.input_size=64", "data.input_size"),
    ("data.input_size=[64]", "data.input_size"),
    ("data.input_size=[64, 64, 3]", "data.input_size"),
    ("data.input_size=[64, big]", "data.input_size"),
    ("optim.milestones=[0.5, late]", "optim.milestones"),
    ("model=resnet18", "model"),
])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert f"'{key}'" in str(err.value)


@pytest.mark.parametrize("override, key", [
    ("model.backbone=resnet152", "model.backbone"),
    ("model.norm=batchnorm", "model.norm"),
    ("loss.box=l1", "loss.box"),
    ("optim.name=adam", "optim.name"),
    ("optim.schedule=exponential", "optim.schedule"),
    ("pipeline.schedule=zero_bubble", "pipeline.schedule"),
    ("train.device=tpu", "train.device"),
    ("eval.keypoint_refine=dark", "eval.keypoint_refine"),
    ("data.cache=disk", "data.cache"),
])
def test_invalid_choice_names_the_key_and_the_choices(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert key in message and "is not one of" in message


def test_choices_are_the_registries_names():
    for backbone in BACKBONES.names():
        assert load_config(None, [f"model.backbone={backbone}"]).model.backbone == backbone
    for norm in NORMS.names():
        assert load_config(None, [f"model.norm={norm}"]).model.norm == norm


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda r: r.key)
def test_every_registry_serves_a_config_key_whose_default_it_holds(registry):
    section, key = registry.key.split(".")
    default = getattr(getattr(Config(), section), key)
    assert default in registry.names(), f"{registry.key}'s default {default!r} is not registered"
    assert len(registry.names()) >= 2


@pytest.mark.parametrize("size", ["[100, 128]", "[128, 48]", "[0, 64]", "[-32, 64]"])
def test_input_size_must_be_positive_multiples_of_32(size):
    with pytest.raises(ConfigError, match="data.input_size.*multiples of 32"):
        load_config(None, [f"data.input_size={size}"])


@pytest.mark.parametrize("overrides, words", [
    (["train.batch_size=0"], "train.batch_size"),
    (["pipeline.stages=2", "train.batch_size=6", "pipeline.microbatches=4"], "pipeline.microbatches"),
    (["pipeline.stages=2", "train.batch_size=6", "pipeline.data_parallel=4"], "pipeline.data_parallel"),
    (["pipeline.stages=3", "pipeline.microbatches=2"], "1f1b needs pipeline.microbatches >= pipeline.stages"),
    (["data.synthetic.people=[1, 7]"], r"data.synthetic.people=\(1, 7\): need 1 <= min <= max <= 5"),
    (["data.synthetic.people=[3, 2]"], "data.synthetic.people"),
    (["data.synthetic.heights=[0.05, 0.9]"], "data.synthetic.heights"),
    (["data.synthetic.heights=[0.9, 0.5]"], "data.synthetic.heights"),
    (["pipeline.stages=2", "pipeline.microbatches=2", "model.norm=cbn", "model.cbn_burnin=0"], "model.cbn_burnin"),
])
def test_inconsistent_values_are_refused(overrides, words):
    with pytest.raises(ConfigError, match=words):
        load_config(None, overrides)


# --- bundled configs --------------------------------------------------------------------------

def test_there_is_a_bundled_config():
    assert "cpu_small" in [p.stem for p in BUNDLED]


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_bundled_config_resolves_by_name_and_validates(path):
    assert resolve_config_path(path.stem) == path
    assert resolve_config_path(path.name) == path
    cfg = load_config(path.stem)
    raw = yaml.safe_load(path.read_text()) or {}
    # What the file says is what the config holds (nothing silently dropped).
    flat = cfg.flat()
    for section, values in raw.items():
        for key, value in (values or {}).items():
            if not isinstance(value, dict):
                assert flat[f"{section}.{key}"] == value, f"{path.name}: {section}.{key}"
    assert config_from_dict(cfg.to_dict()) == cfg


def test_unknown_config_name_lists_the_bundled_ones():
    with pytest.raises(ConfigError) as err:
        load_config("no_such_config")
    assert "no_such_config" in str(err.value) and "cpu_small" in str(err.value)


def test_every_field_has_a_flat_name():
    flat = Config().flat()
    sections = [f.name for f in dataclasses.fields(Config)]
    assert {key.split(".")[0] for key in flat} == set(sections)
    assert flat["model.backbone"] == "resnet18" and flat["data.synthetic.seed"] == 0


def test_pinned_data_paths_are_absolute_and_name_the_same_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.root=coco", "data.synthetic_dir=cache/synthetic"])
    cfg.data.pin_paths()
    assert (cfg.data.root, cfg.data.synthetic_dir) == (str(tmp_path / "coco"), str(tmp_path / "cache" / "synthetic"))
    unset = load_config(None, [])
    unset.data.pin_paths()
    assert unset.data.root is None and Path(unset.data.synthetic_dir).is_absolute()
