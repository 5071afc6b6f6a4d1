"""What every export format shares: the network as exported, the run's config stored inside the file,
and the checks of an export's arguments made before any work.

An exported file carries the run's config as JSON (`cfg.to_dict()`, `data.input_size` set to the
exported size), so that `Predictor.load(file)` letterboxes and decodes as the run does without the
checkpoint. The JSON is read back with `json.loads` and checked by `config_from_dict`: plain values,
never code.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from pgnet.config import Config, config_from_dict
from pgnet.errors import CheckpointError, ConfigError, MissingFileError
from pgnet.models import PGNet, build_model
from pgnet.predict.predictor import load_for_inference

STRIDE = 32  # the network's coarsest stride (ResNet's C5): an input side must be a multiple of it
INPUT_NAME = "images"
CONFIG_KEY = "pgnet.config"  # ONNX metadata_props key; TorchScript stores it as the extra file CONFIG_FILE
CONFIG_FILE = "pgnet/config.json"


def check_input_size(size: tuple[int, int] | list[int]) -> tuple[int, int]:
    """(h, w) when both are positive multiples of the network's stride, else a ConfigError saying so."""
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0 or h % STRIDE or w % STRIDE:
        raise ConfigError(f"--input-size {h} {w}: height and width must be positive multiples of {STRIDE}, "
                          f"the network's stride (e.g. {max(STRIDE, round(h / STRIDE) * STRIDE)} "
                          f"{max(STRIDE, round(w / STRIDE) * STRIDE)})")
    return h, w


def check_out_path(out: str | Path, suffixes: tuple[str, ...], format_name: str) -> Path:
    """`out` when its folder exists and its suffix is one `Predictor.load` reads as `format_name`."""
    out = Path(out)
    if out.suffix.lower() not in suffixes:
        raise ConfigError(f"--out {out}: a {format_name} file must end in {' or '.join(suffixes)} "
                          "(Predictor.load and pgnet predict --model tell formats by suffix)")
    if not out.parent.is_dir():
        raise MissingFileError(f"--out {out}: folder {out.parent} does not exist; create it or name another --out")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name the file to write, e.g. {out / ('model' + suffixes[0])}")
    return out


def exportable_model(checkpoint: str | Path) -> tuple[PGNet, Config]:
    """The checkpoint's network as `plain_conv_copy` makes it, and its config."""
    trained, cfg = load_for_inference(checkpoint)
    return plain_conv_copy(trained, cfg), cfg


def plain_conv_copy(model: PGNet, cfg: Config) -> PGNet:
    """`model`'s weights in a network with plain convolutions throughout, in eval mode.

    `model.small_map_matmul` is a CPU speed-up of eager PyTorch (an autograd Function over patches); the
    same weights as plain `nn.Conv2d`s export to standard Conv nodes that every runtime optimises itself."""
    plain = build_model(dataclasses.replace(cfg.model, small_map_matmul=False, pretrained=None))
    plain.load_state_dict(model.state_dict())
    return plain.eval()


def exported_config(cfg: Config, input_size: tuple[int, int] | None) -> Config:
    """The run's config as the exported file stores it: `data.input_size` the exported size."""
    stored = config_from_dict(cfg.to_dict(), "the checkpoint's config")
    if input_size is not None:
        stored.data.input_size = check_input_size(input_size)
    return stored


def config_json(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)


def config_from_json(text: str | bytes | None, path: str | Path, how_to_fix: str) -> Config:
    """The config an exported file stores, checked; a CheckpointError when it is missing or unusable."""
    if not text:
        raise CheckpointError(f"'{path}' holds no PGNet config ({CONFIG_KEY}): it was not written by "
                              f"`pgnet export`; {how_to_fix}")
    try:
        values = json.loads(text)
        return config_from_dict(values, f"{path} ({CONFIG_KEY})")
    except (json.JSONDecodeError, UnicodeDecodeError, ConfigError) as err:
        raise CheckpointError(f"'{path}': its stored PGNet config cannot be used ({err}); {how_to_fix}") from None


def check_model_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"model file '{path}' not found; pass a checkpoint (.pt) or a file "
                               "`pgnet export` wrote (.onnx, .ts)")
    return path


def max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest |a - b| over every output map (both dicts must name the same maps)."""
    if set(a) != set(b):
        raise ValueError(f"outputs differ: {sorted(a)} against {sorted(b)}")
    return max(float((a[k].float().cpu() - b[k].float().cpu()).abs().max()) for k in a)
