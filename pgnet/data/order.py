"""The order in which a training epoch visits images, as a pure function of (seed, epoch).

The single-process trainer and the Ray pipeline both take batches from here,
which is what makes their losses comparable step by step.
"""
from __future__ import annotations

import numpy as np


def epoch_permutation(num_images: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x0DE7]).permutation(num_images)


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Full batches only (the last partial batch is dropped), so micro-batches stay equal."""
    return num_images // batch_size


def epoch_batches(num_images: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    order = epoch_permutation(num_images, seed, epoch)
    n = steps_per_epoch(num_images, batch_size)
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(n)]


def replica_slice(batch: np.ndarray, replica: int, replicas: int) -> np.ndarray:
    """The part of a global batch that data-parallel replica `replica` trains on."""
    per = len(batch) // replicas
    return batch[replica * per:(replica + 1) * per]
