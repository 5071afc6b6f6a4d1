"""The tracking tests' sweep file: the tiny config over `model.neck`, tracked in MLflow, its best model registered."""
from __future__ import annotations

from pathlib import Path

import yaml

from tests.support.configs import TINY_OVERRIDES

REGISTERED_NAME = "pgnet-ui-test"


def tiny_sweep_file(folder: Path, data_root: Path, uri: str) -> Path:
    """A sweep file of the tiny config over `model.neck`, tracked at `uri`, registering its best model."""
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in TINY_OVERRIDES)}
    overrides.update({"data.root": str(data_root), "tracking.mlflow": True, "tracking.tracking_uri": uri,
                      "pipeline.stages": 1})
    (folder / "tiny.yaml").write_text("train: {epochs: 1}\n")
    spec = {"name": "ui-sweep", "base": "tiny.yaml", "overrides": overrides,
            "search_space": {"model.neck": {"grid": ["cffm", "fpn"]}}, "metric": "keypoints/AP", "mode": "max",
            "register_model": REGISTERED_NAME}
    path = folder / "ui_sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path
