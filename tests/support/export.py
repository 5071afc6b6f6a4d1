"""What the export tests share: a tiny checkpoint whose maps have clear peaks, and people compared one to one.

A briefly trained tiny model's heatmaps sit at their prior (0.1003 +- 5e-6 after a 4-step run): its people
differ by less than a runtime's rounding, so which peaks win the top-k is a matter of luck. Random weights
with trained-like BN statistics and output layers of ordinary scale give maps whose peaks stand clear.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pgnet.config import Config, load_config
from pgnet.models import build_model
from pgnet.run.checkpoint import checkpoint_dict
from pgnet.run.state import RunState
from pgnet.torch_files import save_atomic
from tests.support.configs import TINY_OVERRIDES

MAP_TOLERANCE = 1e-4  # max abs difference of any output map between an exported file and torch


def clear_peaks_checkpoint(path: Path, seed: int = 0) -> tuple[Path, Config]:
    """A weights-only checkpoint (as `checkpoint_best.pt`) of the tiny config's network: BN statistics of a
    few random batches, heads' output layers drawn at std 0.05 (their init is 0.001: flat maps)."""
    cfg = load_config(None, TINY_OVERRIDES)
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a plain average of the batches below
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.randn(4, 3, *cfg.data.input_size))
        for head in model.heads.heads.values():
            torch.nn.init.normal_(head[2].weight, std=0.05)
    save_atomic(checkpoint_dict(cfg, RunState(), model.state_dict()), path)
    return path, cfg


def assert_same_people(expected: list[dict], actual: list[dict], coord_tol: float = 0.02,
                       score_tol: float = 1e-4) -> None:
    """The same people on the same images, in any order (equal scores may come in either order): each
    expected person has one actual person on its image whose box and key points are within `coord_tol`
    pixels (results are rounded to 0.01 px) and whose score is within `score_tol`."""
    assert len(actual) == len(expected), (len(actual), len(expected))
    unused = list(range(len(actual)))
    for person in expected:
        distances = {i: _distance(person, actual[i]) for i in unused}
        best = min(distances, key=distances.get)
        assert distances[best] <= coord_tol, (person, actual[best])
        assert abs(actual[best]["score"] - person["score"]) <= score_tol, (person, actual[best])
        unused.remove(best)


def _distance(a: dict, b: dict) -> float:
    """The largest difference of two people's box and key-point values; infinite on different images."""
    if a["image_id"] != b["image_id"]:
        return float("inf")
    return float(np.abs(np.subtract(a["bbox"] + a["keypoints"], b["bbox"] + b["keypoints"])).max())


def sample_images(tiny_data: Path, coco_sample: Path) -> list[Image.Image]:
    """A synthetic image and a COCO photo (not square: the letterbox pads it)."""
    paths = [min((tiny_data / "val2017").glob("*.jpg")), coco_sample / "val2017/000000000785.jpg"]
    return [Image.open(p).convert("RGB") for p in paths]


def output_maps(forward, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """`forward(inputs)` without gradients: a Predictor's forward or a torch network."""
    with torch.no_grad():
        return forward(inputs)
