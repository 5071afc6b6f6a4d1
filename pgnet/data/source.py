"""Where a run's images come from: COCO on disk (`data.root`) or the generated synthetic set."""
from __future__ import annotations

from pathlib import Path

from pgnet.config import DataConfig
from pgnet.data.synthetic import scene_suffix, write_synthetic_dataset


def synthetic_root(cfg: DataConfig) -> Path:
    """One folder per synthetic setting, so runs with different settings never rewrite each other's."""
    s = cfg.synthetic
    key = f"seed{s.seed}-train{s.train_images}-val{s.val_images}-{s.image_size[0]}x{s.image_size[1]}"
    return Path(cfg.synthetic_dir) / (key + scene_suffix(s.people, s.heights))


def resolve_data_root(cfg: DataConfig, progress: bool = True) -> Path:
    """`cfg.root`, or the synthetic set for `cfg.synthetic`, generated when missing."""
    if cfg.root:
        return Path(cfg.root)
    s = cfg.synthetic
    root = synthetic_root(cfg)
    write_synthetic_dataset(root, s.train_images, s.val_images, s.seed, tuple(s.image_size),
                            progress=progress, train_split=cfg.train_split, val_split=cfg.val_split,
                            people=tuple(s.people), heights=tuple(s.heights))
    return root
