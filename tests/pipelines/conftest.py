"""Fixtures of the Ray tests: one small local Ray per session, and the runs several tests compare."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pgnet.config import Config
from pgnet.data.dataset import coco_paths
from pgnet.data.records import ImageRecord, load_coco_records
from pgnet.data.source import resolve_data_root
from pgnet.run.metrics_log import read_jsonl
from pgnet.train import train
from tests.support.configs import pipeline_config
from tests.support.probes import SampleTraceProbe
from tests.support.ray_session import ensure_local_ray


@pytest.fixture
def local_ray():
    """A small local Ray, started once and kept for the session (restarted if a test stopped it)."""
    ensure_local_ray()
    yield


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


def train_records(cfg: Config) -> list[ImageRecord]:
    """The training split's records, in the order the epoch plans (`epoch_batches`) index them."""
    root = resolve_data_root(cfg.data, progress=False)
    return load_coco_records(*coco_paths(root, cfg.data.train_split))[0]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, synthetic_dir):
    """The single-process trainer on the tiny pipeline config: what pipeline runs must reproduce (each set
    of overrides trained once per session). It computes on one thread, as each pipeline worker does
    (`ray.cpus_per_worker: 1`), so that its rounding does not depend on what ran before it."""
    done: dict[tuple[str, ...], Path] = {}

    def run(*overrides: str) -> tuple[list[dict], Path]:
        if overrides not in done:
            done[overrides] = tmp_path_factory.mktemp("reference")
            threads = torch.get_num_threads()
            try:
                train(pipeline_config(synthetic_dir, *overrides, "train.threads=1"), done[overrides], progress=False)
            finally:
                torch.set_num_threads(threads)
        return read_jsonl(done[overrides] / "metrics.jsonl"), done[overrides]
    return run


@pytest.fixture(scope="session")
def dp_run(tmp_path_factory, synthetic_dir):
    """One traced 2-stage x 2-replica run, shared by the equivalence and data-feed tests. It names its
    data by a path relative to the driver's working directory, which is not the workers' (or Ray's)."""
    from pipelines.training.launch import train_on_ray
    ensure_local_ray()
    run_dir = tmp_path_factory.mktemp("dp_run")
    layout = ("pipeline.stages=2", "pipeline.data_parallel=2", "pipeline.microbatches=2")
    cwd = os.getcwd()
    os.chdir(synthetic_dir.parent)
    try:
        summary = train_on_ray(pipeline_config(Path(synthetic_dir.name), *layout), run_dir,
                               probes=(SampleTraceProbe(),))
    finally:
        os.chdir(cwd)
    return pipeline_config(synthetic_dir, *layout), run_dir, summary
