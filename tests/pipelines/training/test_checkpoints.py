"""Pipeline checkpoints: resumable with another stage count, and a killed worker costs only the last steps.

Losses are deterministic for a seed and a stage layout, so a restarted run logs
exactly the losses of the steps it repeats. Across stage counts, float32
summation order differs (micro-batch sizes, stage boundaries): the gap starts
near 1e-7 and grows with every SGD step (in float64 the runs agree bit for bit,
see DEVELOPERS.md), hence the looser bound after the first resumed step.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from pgnet.data.order import epoch_batches
from pgnet.errors import PGNetError
from pgnet.run.metrics_log import read_jsonl
from pipelines.training.launch import latest_checkpoint, train_on_ray
from pipelines.training.shards import read_meta
from tests.pipelines.conftest import train_records
from tests.support.configs import pipeline_config
from tests.support.probes import SampleTraceProbe, read_trace

pytestmark = pytest.mark.ray

CONSTANT_LR = ["optim.schedule=constant", "train.max_steps=0"]


def losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records}


def test_resume_mid_epoch_with_a_different_stage_count(local_ray, synthetic_dir, reference_run, tmp_path, caplog):
    """3 steps per epoch: a 1-stage run that max_steps stopped after step 2, checkpointed at steps 1 and 2, its
    last checkpoint then truncated (a crash mid-write). Extended on 2 stages, it resumes from step 1's checkpoint
    (re-sharded), takes the second batch of epoch 1 next, and reproduces the single-process losses."""
    reference, _ = reference_run(*CONSTANT_LR, "train.epochs=2")
    cut = pipeline_config(synthetic_dir, "optim.schedule=constant", "train.max_steps=2", "train.epochs=2",
                          "pipeline.stages=1", "train.checkpoint_every_steps=1")
    assert train_on_ray(cut, tmp_path, probes=(SampleTraceProbe(),))["step"] == 2
    newest = latest_checkpoint(tmp_path)
    assert read_meta(newest)["step"] == 2
    shard = newest / "stage_0.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    extended = pipeline_config(synthetic_dir, *CONSTANT_LR, "train.epochs=2", "pipeline.stages=2")
    summary = train_on_ray(extended, tmp_path, resume=True, probes=(SampleTraceProbe(),))
    assert (summary["step"], summary["epoch"]) == (6, 2)
    assert f"skipping the damaged pipeline checkpoint {newest}" in caplog.text

    logged = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["epoch"]) for r in logged] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
    records = train_records(cut)
    plan = [[records[i].image_id for i in batch] for epoch in (1, 2)
            for batch in epoch_batches(len(records), cut.train.batch_size, cut.train.seed, epoch)]
    seen = {e["step"]: e["ids"] for e in read_trace(tmp_path) if (e["stage"], e["replica"]) == (0, 0)}
    assert [seen[step] for step in range(1, 7)] == plan
    got, want = losses(logged), losses(reference)
    assert [got[s] for s in (1, 2, 3)] == pytest.approx([want[s] for s in (1, 2, 3)], rel=1e-4)
    assert [got[s] for s in (4, 5, 6)] == pytest.approx([want[s] for s in (4, 5, 6)], rel=5e-3)


def test_starting_over_an_existing_run_needs_resume(local_ray, synthetic_dir, tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(FileExistsError, match="--resume"):
        train_on_ray(pipeline_config(synthetic_dir, "pipeline.stages=2"), tmp_path)


def test_resuming_a_single_process_run_on_the_pipeline_is_refused(synthetic_dir, reference_run, tmp_path):
    _, source = reference_run()
    run_dir = Path(shutil.copytree(source, tmp_path / "run"))
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(FileExistsError, match="single-process run.*pipeline.stages=0"):
        train_on_ray(pipeline_config(synthetic_dir, "pipeline.stages=2"), run_dir, resume=True)
    assert (run_dir / "metrics.jsonl").read_text() == before


def registered_step(run_dir: Path) -> int:
    """The step of the newest pipeline checkpoint that Ray Train's controller has registered (named in its
    checkpoint manager's snapshot); -1 when there is none yet."""
    try:  # Ray Train deletes checkpoints beyond the two newest meanwhile
        newest = latest_checkpoint(run_dir)
        snapshots = list((run_dir / "ray").glob("*/checkpoint_manager_snapshot.json"))
        if newest is None or not any(newest.name in s.read_text() for s in snapshots):
            return -1
        return read_meta(newest)["step"]
    except (OSError, PGNetError):
        return -1


KILL_SEED = 1  # which stages die, and at which steps: drawn, but the same in every run of the test


def test_three_killed_stage_workers_lose_only_the_steps_since_a_checkpoint(local_ray, synthetic_dir, tmp_path):
    """Drill: a random stage's worker is killed at a random step, three times in one run. Checkpoints every 2
    steps (3 steps an epoch: mid-epoch ones too): each new worker group goes on from the last one, losing at
    most 2 steps, on the same samples in the same order, so the step log and the loss curve are continuous."""
    draw = random.Random(KILL_SEED)
    kills = [(draw.randrange(2), step) for step in (draw.randint(3, 4), draw.randint(6, 7), draw.randint(9, 10))]
    cfg = pipeline_config(synthetic_dir, *CONSTANT_LR, "train.epochs=4", "pipeline.stages=2", "ray.max_failures=3",
                          "train.checkpoint_every_steps=2")
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(summary=train_on_ray(cfg, tmp_path)), daemon=True)
    runner.start()
    metrics, deadline = tmp_path / "metrics.jsonl", time.time() + 600
    seen: list[dict[int, float]] = []  # the losses logged before each kill
    figures = []
    for rank, at_step in kills:
        # once step `at_step` is logged and Ray Train has registered the checkpoint before it (its controller
        # does so at its next poll, after the upload: a worker killed before that restarts from the one before)
        while time.time() < deadline and not (len(read_jsonl(metrics)) >= at_step and
                                              registered_step(tmp_path) >= at_step - 2):
            time.sleep(0.05)
        pid_file = tmp_path / "workers" / f"rank{rank}.json"
        victim = json.loads(pid_file.read_text())["pid"]
        seen.append(losses(read_jsonl(metrics)))
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)  # the stage's worker dies without warning
        while time.time() < deadline and json.loads(pid_file.read_text())["pid"] == victim:
            time.sleep(0.05)
        replaced = json.loads(pid_file.read_text())
        while time.time() < deadline and runner.is_alive() and len(read_jsonl(metrics)) <= replaced["started_at_step"]:
            time.sleep(0.05)
        figures.append((rank, len(seen[-1]), replaced["started_at_step"], time.time() - killed_at))
        assert replaced["started_at_step"] >= len(seen[-1]) - 2  # from a step checkpoint: at most 2 steps lost
    runner.join(timeout=600)
    assert not runner.is_alive(), "the run did not finish after its workers were killed"

    assert outcome["summary"]["step"] == 12
    records = read_jsonl(metrics)
    assert [r["step"] for r in records] == list(range(1, 13))  # each step logged once
    after = losses(records)
    for before in seen:
        assert {s: after[s] for s in before} == before  # the repeated steps: exactly the same losses
    print("\nkilled stage, at step, resumed at step, seconds until a new step was logged:",
          "; ".join(f"stage {r} at {s}, resumed at {b}, {t:.1f} s" for r, s, b, t in figures))
