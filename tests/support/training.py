"""What the trainer's tests share: the tiny run's length, and reading a run's logs and checkpoints."""
from __future__ import annotations

from pathlib import Path

import torch

from pgnet.run.metrics_log import WALL_CLOCK_KEYS

STEPS_PER_EPOCH = 4  # tiny_data's 16 images, batch 4
TWO_EPOCHS = ("train.epochs=2",)


def losses(records: list[dict]) -> list[float]:
    return [r["loss"] for r in records]


def training_columns(records: list[dict]) -> list[dict]:
    """Everything a step record says about training (without its wall-clock measurements)."""
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_KEYS} for r in records]


def load(path: Path) -> dict:
    """A checkpoint as `pgnet eval` reads it: tensors and plain values only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
