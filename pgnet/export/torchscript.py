"""TorchScript files of a PGNet network: `torch.jit.trace`, saved with the run's config as an extra file.

A traced PGNet takes any batch (no operation depends on it). `torch.jit.load` runs no Python, but a
TorchScript file is a program of TorchScript code run by torch's interpreter (DEVELOPERS.md): load only
files you exported or trust; ONNX is the format to hand to others.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from pgnet.atomic import atomic_path
from pgnet.config import Config
from pgnet.errors import CheckpointError
from pgnet.export.common import CONFIG_FILE, check_model_file, config_from_json, config_json
from pgnet.models import PGNet
from pgnet.predict.predictor import Predictor
from pgnet.runtime import resolve_device

SUFFIXES = (".ts", ".torchscript")
HOW_TO_FIX = "export the checkpoint again with `pgnet export --checkpoint CKPT --format torchscript --out FILE.ts`"


@contextlib.contextmanager
def jit_deprecation_quiet() -> Iterator[None]:
    """torch 2.14 deprecates TorchScript (`torch.jit.trace`, `save`...) for torch.export; it still works, and a
    user of `pgnet export` has nothing to change: the notice is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=Warning)
        yield


def write_torchscript(model: PGNet, cfg: Config, out: Path) -> None:
    """`model` (eval mode, on the CPU) traced at `cfg.data.input_size`, with the config as `CONFIG_FILE`."""
    h, w = cfg.data.input_size
    with jit_deprecation_quiet(), torch.no_grad():
        traced = torch.jit.trace(model, torch.zeros(1, 3, h, w), strict=False)  # strict=False: a dict of outputs
    with atomic_path(out) as tmp, jit_deprecation_quiet():
        torch.jit.save(traced, str(tmp), _extra_files={CONFIG_FILE: config_json(cfg)})


def load_torchscript(path: str | Path, device: str = "auto") -> Predictor:
    """A Predictor over the TorchScript module in `path` (written by `pgnet export`), on `device`."""
    path = check_model_file(path)
    target = resolve_device(device)
    extra = {CONFIG_FILE: ""}
    try:
        with jit_deprecation_quiet():
            module = torch.jit.load(str(path), map_location=target, _extra_files=extra)
    except (RuntimeError, ValueError) as err:
        reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        reason = reason.split(". ")[0]  # torch goes on with advice about corrupted checkpoints
        raise CheckpointError(f"'{path}' is not a TorchScript file torch can load ({reason}); {HOW_TO_FIX}") from None
    cfg = config_from_json(extra[CONFIG_FILE], path, HOW_TO_FIX)
    return Predictor(module.eval(), cfg, target, name="torchscript")
