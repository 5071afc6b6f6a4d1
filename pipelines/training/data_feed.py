"""Ray Data preprocessing for pipeline training: decode, augment and encode targets across the cluster.

The COCO file is read into records on the driver. Each epoch, a data-parallel
replica's first stage builds a Ray Data plan over its share of the epoch's
order (`pgnet.data.order`), `map_batches(make_sample)` runs on the cluster's
CPUs, and the results stream back in order. Bad images come back flagged; the
consumer counts and drops them and re-batches, so every batch stays full.
"""
from __future__ import annotations

import itertools
import logging
import pickle
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import ray.data

from pgnet.codec.targets import TARGET_KEYS, empty_targets, output_size
from pgnet.config import Config
from pgnet.data.order import epoch_batches, replica_slice
from pgnet.data.records import ImageRecord
from pgnet.data.sample import META_KEYS, BadSample, make_sample
from pgnet.errors import DataError

log = logging.getLogger("pgnet.data_feed")

# Images per map_batches call (and per block up to 64 blocks): a DataLoader worker's batch. Fewer,
# larger tasks cut Ray's per-task cost, a large share of a small task's time.
SAMPLE_BATCH = 16


def replica_rows(records: list[ImageRecord], cfg: Config, epoch: int, replica: int) -> list[dict[str, Any]]:
    """The rows replica `replica` trains on this epoch, in step order: slices of the global batches."""
    rows = []
    for batch in epoch_batches(len(records), cfg.train.batch_size, cfg.train.seed, epoch):
        for index in replica_slice(batch, replica, cfg.pipeline.data_parallel):
            rows.append({"position": len(rows), "record": pickle.dumps(records[index])})
    return rows


class PrepareSamples:
    """The `map_batches` function: pickled records in, stacked sample arrays (+ `ok` flags) out."""

    def __init__(self, cfg: Config, epoch: int):
        self.kwargs = dict(input_size=tuple(cfg.data.input_size), max_people=cfg.data.max_people,
                           augment=cfg.data.augment, seed=cfg.train.seed, epoch=epoch, train=True)
        h, w = cfg.data.input_size
        self.blank = {"image": np.zeros((3, h, w), np.float32),
                      **empty_targets(*output_size((h, w)), cfg.data.max_people),
                      "image_id": np.asarray(-1, np.int64), "inv_affine": np.zeros((2, 3), np.float32),
                      "orig_size": np.zeros(2, np.int64), "flipped": np.asarray(False)}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        samples, ok, reasons = [], [], []
        for blob in batch["record"]:
            record: ImageRecord = pickle.loads(blob)
            try:
                samples.append(make_sample(record, **self.kwargs))
                ok.append(True)
                reasons.append("")
            except BadSample as err:
                samples.append({**self.blank, "image_id": np.asarray(record.image_id, np.int64)})
                ok.append(False)
                reasons.append(str(err))
        out = {key: np.stack([s[key] for s in samples]) for key in self.blank}
        out.update(position=np.asarray(batch["position"]), ok=np.asarray(ok), reason=np.asarray(reasons))
        return out


def epoch_dataset(rows: list[dict[str, Any]], cfg: Config, epoch: int) -> ray.data.Dataset:
    """The epoch's samples as a streaming plan; results keep the rows' order (set before the plan is built)."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    # One map operator has nobody to share with: the per-operator reservation only kept it at one
    # task at a time most of an epoch (`pgnet bench data`).
    ctx.op_resource_reservation_enabled = False
    blocks = max(1, min(len(rows) // SAMPLE_BATCH, 64))
    return ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        PrepareSamples(cfg, epoch), batch_size=SAMPLE_BATCH, batch_format="numpy", num_cpus=cfg.ray.data_cpus)


@dataclass
class FeedStats:
    seen: int = 0
    bad: int = 0
    wait_seconds: float = 0.0


def dataset_blocks(dataset: ray.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
    """The map's output blocks as they are (SAMPLE_BATCH rows each): no re-batching copy."""
    return dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)


def full_batches(blocks: Iterable[dict[str, np.ndarray]], batch_size: int, stats: FeedStats
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Full batches of good samples in the blocks' order; bad ones are counted, logged and dropped. The time
    spent waiting for the next block goes to `stats.wait_seconds`."""
    buffer: list[dict[str, np.ndarray]] = []
    keys = ("image", *TARGET_KEYS, *META_KEYS)
    tick = time.perf_counter()
    for batch in blocks:
        stats.wait_seconds += time.perf_counter() - tick
        for i in range(len(batch["ok"])):
            stats.seen += 1
            if not batch["ok"][i]:
                stats.bad += 1
                log.warning("skipping image %d: %s", int(batch["image_id"][i]), batch["reason"][i])
                continue
            buffer.append({k: batch[k][i] for k in keys})
            if len(buffer) == batch_size:
                yield {k: np.stack([s[k] for s in buffer]) for k in keys}
                buffer = []
        tick = time.perf_counter()


def encoded_batches(records: list[ImageRecord], cfg: Config, count: int) -> list[dict[str, np.ndarray]]:
    """`count` full batches of replica 0's first epoch, encoded here in this process (no Ray Data), for a
    feed that must cost nothing: `train_on_ray(preencoded_batches=...)` cycles them, so that a benchmark's
    step time measures the pipeline alone."""
    rows = replica_rows(records, cfg, 0, 0)
    prepare = PrepareSamples(cfg, 0)
    blocks = (prepare({"record": np.asarray([r["record"] for r in rows[i:i + SAMPLE_BATCH]], dtype=object),
                       "position": np.asarray([r["position"] for r in rows[i:i + SAMPLE_BATCH]])})
              for i in range(0, len(rows), SAMPLE_BATCH))
    per_replica = cfg.train.batch_size // cfg.pipeline.data_parallel
    batches = list(itertools.islice(full_batches(blocks, per_replica, FeedStats()), count))
    if len(batches) < count:
        raise DataError(f"the training split gives {len(batches)} full batches of {per_replica} good images, "
                        f"{count} wanted to pre-encode; add images or lower the count")
    return batches
