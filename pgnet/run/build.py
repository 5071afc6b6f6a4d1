"""What every trainer builds from a config before its first step: the model, the data splits, the length."""
from __future__ import annotations

from pathlib import Path

import torch

from pgnet.config import Config
from pgnet.data.dataset import CocoKeypoints
from pgnet.data.order import steps_per_epoch
from pgnet.data.source import resolve_data_root
from pgnet.errors import DataError
from pgnet.models import PGNet, build_model


def seeded_model(cfg: Config) -> PGNet:
    """The model every trainer starts from: built right after seeding, so it depends on the seed only."""
    torch.manual_seed(cfg.train.seed)
    return build_model(cfg.model)


def training_datasets(cfg: Config, progress: bool = True) -> tuple[CocoKeypoints, CocoKeypoints]:
    """(training split with augmentation, validation split) of `cfg.data`; the synthetic set is written first
    when `data.root` is unset."""
    root = resolve_data_root(cfg.data, progress=progress)
    val_set = validation_dataset(cfg, progress, root)  # an empty one is refused before the training split loads
    return _split(cfg, root, cfg.data.train_split, True, progress), val_set


def validation_dataset(cfg: Config, progress: bool = True, root: Path | None = None) -> CocoKeypoints:
    """The split every evaluation runs on (of `root`, else of `cfg.data`); an empty one is refused before any
    training."""
    root = root or resolve_data_root(cfg.data, progress=progress)
    val_set = _split(cfg, root, cfg.data.val_split, False, progress)
    if len(val_set) == 0:  # found now, not after the first epoch's training
        raise DataError(f"the validation split {cfg.data.val_split!r} of {root} has no images, and every run "
                        "evaluates on it; add images (data.synthetic.val_images for the synthetic set)")
    return val_set


def _split(cfg: Config, root: Path, split: str, train: bool, progress: bool) -> CocoKeypoints:
    return CocoKeypoints(root, split, augment=cfg.data.augment if train else None, train=train,
                         input_size=tuple(cfg.data.input_size), max_people=cfg.data.max_people, seed=cfg.train.seed,
                         cache=cfg.data.cache == "ram", progress=progress)


def total_steps(cfg: Config, num_images: int) -> int:
    """The run's planned length: `train.epochs` of full batches, at most `train.max_steps` (when > 0)."""
    per_epoch = steps_per_epoch(num_images, cfg.train.batch_size)
    if per_epoch == 0:
        raise DataError(f"the training split has {num_images} images, fewer than train.batch_size="
                        f"{cfg.train.batch_size}; lower the batch size or add images")
    steps = per_epoch * cfg.train.epochs
    return min(steps, cfg.train.max_steps) if cfg.train.max_steps > 0 else steps
