"""COCO person key points as a torch Dataset (records + make_sample) and its batch collation.

A bad image is a counted, logged skip: `__getitem__` returns None and `collate_samples` drops it.
With `cache=True` (`data.cache: ram`) the images are decoded once, up front (`pgnet.data.image_cache`).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pgnet.codec.targets import STRIDE, TARGET_KEYS
from pgnet.config import AugmentConfig, Config
from pgnet.data.image_cache import cache_images
from pgnet.data.order import epoch_batches
from pgnet.data.records import load_coco_records
from pgnet.data.sample import META_KEYS, BadSample, make_sample
from pgnet.errors import MissingFileError

log = logging.getLogger("pgnet.data")


def coco_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """`root/annotations/person_keypoints_<split>.json` and `root/<split>/`, checked to exist."""
    root = Path(root)
    ann_file = root / "annotations" / f"person_keypoints_{split}.json"
    image_dir = root / split
    missing = [str(p) for p in (ann_file, image_dir) if not p.exists()]
    if missing:
        raise MissingFileError(
            f"COCO split '{split}' not found under '{root}': missing {', '.join(missing)}. Expected "
            f"{root}/annotations/person_keypoints_{split}.json and the images in {root}/{split}/. "
            "Get COCO 2017 from https://cocodataset.org/#download (the train2017/val2017 images and "
            "annotations_trainval2017.zip) and unpack it there, or generate the synthetic set with "
            f"`pgnet data synth --out {root}` and point data.root at it (or leave data.root unset to use "
            "the synthetic set).")
    return ann_file, image_dir


class CocoKeypoints(Dataset):
    """The people of one COCO split, as samples of `make_sample` (None for a bad image)."""

    def __init__(self, root: str | Path, split: str, *, input_size: tuple[int, int] = (128, 128),
                 max_people: int = 32, augment: AugmentConfig | None = None, train: bool = False,
                 seed: int = 0, stride: int = STRIDE, cache: bool = False, progress: bool = False):
        self.annotation_file, self.image_dir = coco_paths(root, split)
        self.records, self.counts = load_coco_records(self.annotation_file, self.image_dir)
        self.input_size = tuple(input_size)
        self.max_people = max_people
        self.augment = augment
        self.train = train
        self.seed = seed
        self.stride = stride
        self.epoch = 0
        self.bad_samples = 0  # in this process; with DataLoader workers, count via collate_samples
        self.images = cache_images(self.records, name=split, progress=progress) if cache else None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's augmentation draws (call before each epoch, as with DistributedSampler)."""
        self.epoch = int(epoch)

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, np.ndarray] | None:
        record = self.records[index]
        try:
            image = self.images.get(record.image_id) if self.images is not None else None
            if isinstance(image, BadSample):  # found when caching: skipped and counted on every pass
                raise BadSample(image.path, image.reason)
            return make_sample(record, input_size=self.input_size, max_people=self.max_people,
                               augment=self.augment, seed=self.seed, epoch=self.epoch, train=self.train,
                               stride=self.stride, image=image)
        except BadSample as err:
            self.bad_samples += 1
            log.warning("skipping image %d: %s", record.image_id, err)
            return None


def collate_samples(samples: Sequence[dict[str, np.ndarray] | None]
                    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor], int]:
    """Stack samples into (images (B, 3, H, W), targets, meta, num_bad); None samples are dropped.

    When every sample is bad, images has batch size 0 and targets and meta are empty: skip the batch.
    """
    good = [s for s in samples if s is not None]
    num_bad = len(samples) - len(good)
    if not good:
        return torch.zeros((0, 3, 0, 0)), {}, {}, num_bad

    def stack(key: str) -> Tensor:
        return torch.from_numpy(np.stack([s[key] for s in good]))

    return stack("image"), {k: stack(k) for k in TARGET_KEYS}, {k: stack(k) for k in META_KEYS}, num_bad


def epoch_loader(dataset: CocoKeypoints, cfg: Config, epoch: int,
                 batches: list[np.ndarray] | None = None) -> DataLoader:
    """The DataLoader of one training epoch with `data.workers` processes: the epoch's augmentation and its
    batches (`epoch_batches`; give `batches`, a part of them, to resume or stop mid-epoch)."""
    dataset.set_epoch(epoch)
    if batches is None:
        batches = epoch_batches(len(dataset), cfg.train.batch_size, cfg.train.seed, epoch)
    return DataLoader(dataset, batch_sampler=[b.tolist() for b in batches], collate_fn=collate_samples,
                      num_workers=cfg.data.workers)
