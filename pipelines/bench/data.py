"""`pgnet bench data`: Ray Data preprocessing against a torch DataLoader, and Ray Tune's cost per trial.

Both data paths run the same transform on the same images in the same order with N worker processes, in one run.

What a timed epoch includes is what each trainer pays every epoch: for the DataLoader,
a new `DataLoader` forking its N workers (as `pgnet.train` builds one per epoch), then
every batch; for Ray Data, the epoch's rows and plan (`replica_rows`, `epoch_dataset`) on
Ray's already-running workers, then every batch of `full_batches`. A warm-up epoch of each
comes first and is not timed: Ray's start-up and its workers' first imports, and the
first reads of the image files. Timed epochs alternate between the two paths (a machine
shared with other jobs slows both alike) and the best epoch of each is reported.

Ray Data gets N CPUs: a local Ray started with `num_cpus=N` (or, when Ray is already running
or RAY_ADDRESS names a cluster, `DataContext.execution_options.resource_limits.cpu = N`) and
one CPU per map task (`ray.data_cpus = 1`), so at most N preprocessing tasks run at once, like
N DataLoader workers.
"""
from __future__ import annotations

import logging
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray
import ray.data
from ray import tune

from pgnet.config import Config, load_config
from pgnet.data.dataset import CocoKeypoints, epoch_loader
from pgnet.errors import ConfigError
from pgnet.run.build import training_datasets
from pipelines.training.data_feed import (
    FeedStats,
    dataset_blocks,
    epoch_dataset,
    full_batches,
    replica_rows,
)
from pipelines.training.ray_runtime import ensure_ray

log = logging.getLogger("pgnet.bench_data")

SOURCE_SIZE = (256, 256)  # synthetic images on disk, warped to the input size
INPUT_SIZE = (128, 128)
BATCH = 16
TIMED_EPOCHS = 3  # per path, alternating
TARGET_RATIO = 0.9
TRIVIAL_SECONDS = 0.5  # the work of one trivial trial: a sleep, so a busy machine does not stretch it


@dataclass
class EpochTiming:
    seconds: float
    first_batch_seconds: float
    image_ids: list[int]

    @property
    def images_per_s(self) -> float:
        return len(self.image_ids) / self.seconds


def bench_config(images: int, workers: int, synthetic_dir: str | Path | None = None) -> Config:
    """The data benchmark's config: `images` synthetic 256x256 images cut to 128x128 training inputs."""
    if images < BATCH:
        raise ConfigError(f"--images {images} is less than one batch of {BATCH}; use at least {BATCH}")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: both paths need at least one worker process")
    overrides = [
        f"data.synthetic.train_images={images}", "data.synthetic.val_images=1",
        f"data.synthetic.image_size=[{SOURCE_SIZE[0]}, {SOURCE_SIZE[1]}]",
        f"data.input_size=[{INPUT_SIZE[0]}, {INPUT_SIZE[1]}]", f"train.batch_size={BATCH}",
        f"data.workers={workers}", "ray.data_cpus=1.0", f"ray.num_cpus={workers}", "pipeline.data_parallel=1",
    ]
    if synthetic_dir is not None:
        overrides.append(f"data.synthetic_dir={synthetic_dir}")
    return load_config(None, overrides)


def training_set(cfg: Config, progress: bool = False) -> CocoKeypoints:
    """The training split as the single-process trainer builds it (train augmentation on)."""
    return training_datasets(cfg, progress=progress)[0]


def dataloader_epoch(dataset: CocoKeypoints, cfg: Config, epoch: int) -> EpochTiming:
    """One epoch as `pgnet.train` reads it: a new DataLoader over the epoch's batches."""
    start = time.perf_counter()
    ids: list[int] = []
    first = None
    for images, _, meta, _ in epoch_loader(dataset, cfg, epoch):
        if first is None:
            first = time.perf_counter() - start
        ids.extend(meta["image_id"].tolist())
    return EpochTiming(time.perf_counter() - start, first or math.nan, ids)


def ray_data_epoch(dataset: CocoKeypoints, cfg: Config, epoch: int) -> EpochTiming:
    """One epoch as a pipeline's first stage reads it: rows, plan, `full_batches`."""
    start = time.perf_counter()
    rows = replica_rows(dataset.records, cfg, epoch, 0)
    ids: list[int] = []
    first = None
    for batch in full_batches(dataset_blocks(epoch_dataset(rows, cfg, epoch)), cfg.train.batch_size, FeedStats()):
        if first is None:
            first = time.perf_counter() - start
        ids.extend(batch["image_id"].tolist())
    return EpochTiming(time.perf_counter() - start, first or math.nan, ids)


def measure_data(cfg: Config, dataset: CocoKeypoints, timed_epochs: int = TIMED_EPOCHS) -> dict[str, Any]:
    """Warm-up epoch of each path over `dataset` (`training_set(cfg)`), then `timed_epochs` of each,
    alternating; the best epoch of each."""
    ctx = ray.data.DataContext.get_current()
    limits = ctx.execution_options.resource_limits
    ctx.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(cpu=cfg.data.workers)
    try:
        warm_ray, warm_loader = ray_data_epoch(dataset, cfg, 0), dataloader_epoch(dataset, cfg, 0)
        ray_runs, loader_runs = [], []
        for epoch in range(1, timed_epochs + 1):
            ray_runs.append(ray_data_epoch(dataset, cfg, epoch))
            loader_runs.append(dataloader_epoch(dataset, cfg, epoch))
    finally:
        ctx.execution_options.resource_limits = limits
    same = all(r.image_ids == l.image_ids for r, l in zip([warm_ray, *ray_runs], [warm_loader, *loader_runs]))
    if not same:
        raise RuntimeError("Ray Data and the DataLoader read different images or orders: the comparison is void")
    best_ray = max(ray_runs, key=lambda t: t.images_per_s)
    best_loader = max(loader_runs, key=lambda t: t.images_per_s)
    return {
        "images_per_epoch": len(best_ray.image_ids),
        "ray_images_per_s": best_ray.images_per_s,
        "dataloader_images_per_s": best_loader.images_per_s,
        "ratio": best_ray.images_per_s / best_loader.images_per_s,
        "ray_epochs_images_per_s": [t.images_per_s for t in ray_runs],
        "dataloader_epochs_images_per_s": [t.images_per_s for t in loader_runs],
        "ray_first_batch_s": statistics.median(t.first_batch_seconds for t in ray_runs),
        "dataloader_first_batch_s": statistics.median(t.first_batch_seconds for t in loader_runs),
        "warmup_s": {"ray": warm_ray.seconds, "dataloader": warm_loader.seconds},
    }


# ---------------------------------------------------------------------- Tune overhead

def trivial_work(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def trivial_trial(config: dict[str, Any]) -> None:
    """A function trainable that does the fixed work once and reports once."""
    tune.report({"seconds": trivial_work(config["seconds"])})


def measure_tune(trials: int, seconds: float = TRIVIAL_SECONDS) -> dict[str, float]:
    """Wall time of a Tune sweep of `trials` trivial trials, one at a time, against as many plain calls."""
    start = time.perf_counter()
    for _ in range(trials):
        trivial_work(seconds)
    plain = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="pgnet-bench-tune-") as storage:
        start = time.perf_counter()
        tuner = tune.Tuner(
            tune.with_resources(trivial_trial, {"cpu": 1}),
            param_space={"seconds": seconds, "index": tune.grid_search(list(range(trials)))},
            # one at a time, like the plain calls: the difference is Tune's own cost, not parallelism
            tune_config=tune.TuneConfig(max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=storage, name="trivial", verbose=0),
        )
        results = tuner.fit()
        swept = time.perf_counter() - start
    if results.num_errors:
        raise RuntimeError(f"{results.num_errors} of {trials} trivial Tune trials failed; see the Ray logs above")
    return {"tune_s": swept, "plain_s": plain, "tune_ratio": swept / plain,
            "overhead_per_trial_s": (swept - plain) / trials, "trials": trials, "trial_work_s": seconds}


# ---------------------------------------------------------------------- the command

def run_data_benchmark(images: int = 512, workers: int = 2, trivial_trials: int = 8,
                       print_fn: Callable[[str], Any] = print, *, synthetic_dir: str | Path | None = None,
                       timed_epochs: int = TIMED_EPOCHS) -> dict[str, Any]:
    """Measure and print (a) Ray Data vs DataLoader images/s with `workers` processes each, and
    (b) a Tune sweep of `trivial_trials` trivial trials vs plain calls. Returns the numbers."""
    cfg = bench_config(images, workers, synthetic_dir)
    dataset = training_set(cfg, progress=True)  # the images are generated before anything is timed
    started = not ray.is_initialized()
    ensure_ray(cfg)  # a local Ray of `workers` CPUs (ray.num_cpus), or the one RAY_ADDRESS names
    ray_data_log = logging.getLogger("ray.data")
    level = ray_data_log.level
    ray_data_log.setLevel(logging.WARNING)  # not a line per epoch's plan between the results
    try:
        data = measure_data(cfg, dataset, timed_epochs)
        _print_data(data, cfg, print_fn)
        overhead = measure_tune(trivial_trials)
        _print_tune(overhead, print_fn)
    finally:
        ray_data_log.setLevel(level)
        if started:  # ours: a Ray that was running before is left running
            ray.shutdown()
    return {**data, **overhead, "images": images, "workers": workers}


def _print_data(d: dict[str, Any], cfg: Config, print_fn: Callable[[str], Any]) -> None:
    h, w = cfg.data.synthetic.image_size
    ih, iw = cfg.data.input_size
    n = cfg.data.workers
    print_fn(f"Preprocessing: {d['images_per_epoch']} synthetic {h}x{w} images per epoch -> {ih}x{iw} training "
             f"samples (train augmentation, targets encoded), batch {cfg.train.batch_size}, {n} worker processes "
             f"each; best of {len(d['ray_epochs_images_per_s'])} epochs after one warm-up epoch")
    for name, key in (("Ray Data  ", "ray"), ("DataLoader", "dataloader")):
        epochs = " ".join(f"{v:.1f}" for v in d[f"{key}_epochs_images_per_s"])
        print_fn(f"{name} {d[f'{key}_images_per_s']:8.1f} images/s  (epochs: {epochs}; first batch after "
                 f"{d[f'{key}_first_batch_s']:.2f} s; warm-up epoch {d['warmup_s'][key]:.2f} s)")
    verdict = "meets" if d["ratio"] >= TARGET_RATIO else "below"
    print_fn(f"Ray Data / DataLoader: {d['ratio']:.3f} ({verdict} the target >= {TARGET_RATIO})")


def _print_tune(t: dict[str, float], print_fn: Callable[[str], Any]) -> None:
    print_fn(f"Tune: {t['trials']} trivial trials ({t['trial_work_s']:.1f} s of work each, one at a time) in "
             f"{t['tune_s']:.2f} s vs {t['plain_s']:.2f} s of plain calls")
    print_fn(f"Tune / plain: {t['tune_ratio']:.2f}, overhead {t['overhead_per_trial_s']:.2f} s per trial")
