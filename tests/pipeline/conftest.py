"""Fixtures of the Ray tests: one small local Ray per session, tiny configs, and a reference run."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import ray

from pgnet.config import Config, load_config
from pgnet.data.dataset import coco_paths
from pgnet.data.records import ImageRecord, load_coco_records
from pgnet.data.source import resolve_data_root
from pgnet.metrics_log import read_jsonl
from pgnet.train import train
from pipelines.ray_runtime import start_local_ray

RAY_CPUS = 6  # logical: up to 4 Train workers + Ray Data slots, on this 2-core machine

TINY = [
    "model.backbone=resnet18", "model.norm=gn", "model.cffm_channels=32", "model.decoder_channels=32",
    "model.head_channels=16", "data.input_size=[64, 64]", "data.synthetic.train_images=24",
    "data.synthetic.val_images=4", "data.synthetic.image_size=[128, 128]", "train.batch_size=8",
    "train.epochs=1", "train.max_steps=3", "train.log_every=1", "optim.name=sgd", "optim.lr=0.02",
    "optim.warmup_steps=0", "eval.max_images=4", "tracking.mlflow=false", "pipeline.microbatches=4",
]


@pytest.fixture
def local_ray():
    """A small local Ray, started once and kept for the session (restarted if a test stopped it)."""
    if not ray.is_initialized():
        start_local_ray(RAY_CPUS, log_to_driver=False)
    yield

@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


def train_records(cfg: Config) -> list[ImageRecord]:
    """The training split's records, in the order the epoch plans (`epoch_batches`) index them."""
    root = resolve_data_root(cfg.data, progress=False)
    return load_coco_records(*coco_paths(root, cfg.data.train_split))[0]


def tiny_config(synthetic_dir: Path, *overrides: str) -> Config:
    return load_config(None, [*TINY, f"data.synthetic_dir={synthetic_dir}", *overrides])


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, synthetic_dir):
    """The single-process trainer on the tiny config: what pipeline runs must reproduce (each set of
    overrides trained once per session)."""
    done: dict[tuple[str, ...], Path] = {}

    def run(*overrides: str) -> tuple[list[dict], Path]:
        if overrides not in done:
            done[overrides] = tmp_path_factory.mktemp("reference")
            train(tiny_config(synthetic_dir, *overrides), done[overrides], progress=False)
        return read_jsonl(done[overrides] / "metrics.jsonl"), done[overrides]
    return run


@pytest.fixture(scope="session")
def dp_run(tmp_path_factory, synthetic_dir):
    """One traced 2-stage x 2-replica run, shared by the equivalence and data-feed tests. It names its
    data by a path relative to the driver's working directory, which is not the workers' (or Ray's)."""
    from pipelines.pipeline_train import train_on_ray
    if not ray.is_initialized():
        start_local_ray(RAY_CPUS, log_to_driver=False)
    run_dir = tmp_path_factory.mktemp("dp_run")
    layout = ("pipeline.stages=2", "pipeline.data_parallel=2", "pipeline.microbatches=2")
    cwd = os.getcwd()
    os.chdir(synthetic_dir.parent)
    try:
        summary = train_on_ray(tiny_config(Path(synthetic_dir.name), *layout), run_dir, trace_samples=True)
    finally:
        os.chdir(cwd)
    return tiny_config(synthetic_dir, *layout), run_dir, summary
