"""Ray Data feeds the pipeline: every stage of a replica sees the same samples, replicas split the batch.

The traced run records, per step and stage, the image ids and a checksum of the
images (first stage) or targets (last stage) it received; the test recomputes
those samples independently with `make_sample` and compares.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from pgnet.config import load_config
from pgnet.data.dataset import coco_paths
from pgnet.data.order import epoch_batches
from pgnet.data.sample import make_sample
from pgnet.data.source import resolve_data_root
from pgnet.run.metrics_log import read_jsonl
from pipelines.training.launch import train_on_ray
from pipelines.training.runner import TargetPacker
from tests.pipelines.conftest import train_records
from tests.support.configs import pipeline_config
from tests.support.probes import read_trace as read_trace_entries

pytestmark = pytest.mark.ray


def read_trace(run_dir: Path) -> dict[tuple[int, int, int], dict]:
    """(step, replica, stage) -> trace entry."""
    return {(e["step"], e["replica"], e["stage"]): e for e in read_trace_entries(run_dir)}


def test_targets_reaching_the_last_stage_belong_to_the_images_entering_the_first(dp_run):
    cfg, run_dir, _ = dp_run
    trace = read_trace(run_dir)
    records = train_records(cfg)
    by_id = {r.image_id: r for r in records}
    packer = TargetPacker(cfg)
    batches = epoch_batches(len(records), cfg.train.batch_size, cfg.train.seed, epoch=1)
    for step in (1, 2, 3):
        union = []
        for replica in (0, 1):
            first, last = trace[(step, replica, 0)], trace[(step, replica, 1)]
            assert first["ids"] == last["ids"], f"step {step} replica {replica}: stages saw different images"
            samples = [make_sample(by_id[i], input_size=tuple(cfg.data.input_size), max_people=cfg.data.max_people,
                                   augment=cfg.data.augment, seed=cfg.train.seed, epoch=1, train=True)
                       for i in first["ids"]]
            images = np.stack([s["image"] for s in samples]).astype(np.float64)
            assert first["image_sum"] == pytest.approx(images.sum(), rel=1e-9)
            targets = {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k, _, _ in packer.layout}
            assert last["target_sum"] == pytest.approx(packer.pack(targets).double().sum().item(), rel=1e-9)
            union.extend(first["ids"])
        # the replicas split the global batch of the single-process order, without overlap
        assert union == [records[i].image_id for i in batches[step - 1]]


def test_workers_read_the_drivers_data_through_a_relative_path(dp_run, synthetic_dir):
    """Workers run in Ray's session folder: the run pins the data paths, so no worker builds a data set
    of its own there (and the first stage reads the images it was given)."""
    _, run_dir, summary = dp_run
    assert summary["step"] == 3
    assert load_config(run_dir / "config.yaml").data.synthetic_dir == str(synthetic_dir)
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    assert not list(session.rglob(synthetic_dir.name)), "a worker wrote its own synthetic data set"


def test_report_counts_images_and_wait(dp_run):
    _, _, summary = dp_run
    assert summary["data/images"] == 24  # both replicas' shares of the one epoch
    assert summary["data/bad_images"] == 0
    assert 0 <= summary["data/wait_fraction"] < 1


@pytest.fixture
def dataset_with_a_corrupt_image(tmp_path, synthetic_dir) -> Path:
    cfg = pipeline_config(synthetic_dir)
    root = tmp_path / "coco"
    shutil.copytree(resolve_data_root(cfg.data, progress=False), root)
    ann_file, image_dir = coco_paths(root, cfg.data.train_split)
    first = json.loads(ann_file.read_text())["images"][0]["file_name"]
    (image_dir / first).write_bytes(b"this is not a JPEG")
    return root


def test_a_corrupt_image_is_counted_and_skipped(local_ray, synthetic_dir, dataset_with_a_corrupt_image, tmp_path):
    # one stage: the first stage's feed is what reads, counts and drops images (fewer workers start faster)
    cfg = pipeline_config(synthetic_dir, f"data.root={dataset_with_a_corrupt_image}", "pipeline.stages=1",
                          "train.max_steps=0", "train.epochs=2")
    summary = train_on_ray(cfg, tmp_path / "run")
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    # 23 good images make 2 full batches per epoch: the bad one is dropped, batches stay full
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 1), (1, 2), (2, 3), (2, 4)]
    assert summary["data/bad_images"] == 2 and summary["data/images"] == 48  # once per epoch


def test_too_many_corrupt_images_stop_the_run_with_a_clear_error(local_ray, synthetic_dir,
                                                                dataset_with_a_corrupt_image, tmp_path):
    """Two replicas: each reads 12 of the 24 images, fewer than the 20 a fraction is judged on mid-epoch,
    so the epoch's end must judge it (without that, even 24 bad images of 24 ended a 0-step run "fine")."""
    cfg = pipeline_config(synthetic_dir, f"data.root={dataset_with_a_corrupt_image}", "pipeline.stages=1",
                          "pipeline.data_parallel=2", "pipeline.microbatches=2", "data.max_bad_fraction=0.01")
    with pytest.raises(RuntimeError, match=r"1 of 12 images could not be read \(more than data.max_bad_fraction=0.01"):
        train_on_ray(cfg, tmp_path / "run")
