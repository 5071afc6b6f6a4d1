"""A trained network as one self-contained file for another runtime: ONNX (onnxruntime) or TorchScript.

`export_model(checkpoint, out, format)` writes the file, the run's config inside it; `LOADERS` maps a
file's suffix to a loader `(path, device) -> Predictor`, through which `Predictor.load` and
`pgnet predict --model` run exported files and decode exactly as the checkpoint does.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pgnet.errors import ConfigError
from pgnet.export import onnx, torchscript
from pgnet.export.common import check_input_size, check_out_path, exportable_model, exported_config, max_abs_difference
from pgnet.predict.predictor import Predictor

__all__ = ["FORMATS", "LOADERS", "ExportReport", "export_model"]

FORMATS: dict[str, tuple[str, ...]] = {"onnx": onnx.SUFFIXES, "torchscript": torchscript.SUFFIXES}
LOADERS: dict[str, Callable[[str | Path, str], Predictor]] = {
    **{suffix: onnx.load_onnx for suffix in onnx.SUFFIXES},
    **{suffix: torchscript.load_torchscript for suffix in torchscript.SUFFIXES},
}


@dataclass(frozen=True)
class ExportReport:
    """What `export_model` wrote, and how closely the file, loaded back, matches the torch network."""
    path: Path
    format: str
    input_size: tuple[int, int]
    dynamic_batch: bool
    max_abs_difference: float  # the file, loaded back, against the torch network on one random input


def format_of(out: str | Path, format: str | None) -> str:
    """`format`, or the one `out`'s suffix names; a ConfigError for an unknown one."""
    if format is None:
        suffix = Path(out).suffix.lower()
        found = [name for name, suffixes in FORMATS.items() if suffix in suffixes]
        if not found:
            raise ConfigError(f"--out {out}: give --format ({', '.join(FORMATS)}) or an --out ending in "
                              f"{', '.join(s for suffixes in FORMATS.values() for s in suffixes)}")
        return found[0]
    if format not in FORMATS:
        raise ConfigError(f"--format {format} is not an export format; use one of: {', '.join(FORMATS)}")
    return format


def export_model(checkpoint: str | Path, out: str | Path, format: str | None = None, dynamic_batch: bool = False,
                 input_size: tuple[int, int] | None = None) -> ExportReport:
    """The checkpoint's network as `out` in `format` (default: from `out`'s suffix) at `input_size` (default: the
    run's `data.input_size`); ONNX with a fixed batch of 1 unless `dynamic_batch`. Every argument is checked
    before the checkpoint is read. The written file is loaded back and compared with torch."""
    format = format_of(out, format)
    if input_size is not None:
        input_size = check_input_size(input_size)
    out = check_out_path(out, FORMATS[format], format)
    model, cfg = exportable_model(checkpoint)
    cfg = exported_config(cfg, input_size)
    if format == "onnx":
        onnx.write_onnx(model, cfg, out, dynamic_batch)
    else:
        torchscript.write_torchscript(model, cfg, out)
    loaded = LOADERS[out.suffix.lower()](out, "cpu")
    images = torch.randn(2 if dynamic_batch or format == "torchscript" else 1, 3, *cfg.data.input_size,
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = max_abs_difference(loaded.forward(images), model(images))
    return ExportReport(out, format, tuple(cfg.data.input_size), dynamic_batch or format == "torchscript",
                        difference)
