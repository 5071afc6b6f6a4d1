"""Resuming the single-process trainer: an interrupted run ends exactly as an uninterrupted one, an extended
run follows the longer schedule, a time-limited run spends what is left, and what cannot resume is refused.
"""
from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import pytest
import torch

from pgnet.config import ConfigError, OptimConfig
from pgnet.optim import lr_factor
from pgnet.run.metrics_log import read_jsonl
from pgnet.train import train
from tests.support.training import (
    STEPS_PER_EPOCH,
    TWO_EPOCHS,
    load,
    losses,
    same_weights,
    training_columns,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class Interrupt(Exception):
    """Stands for a crash or Ctrl-C in the middle of a run."""


class InterruptAt:
    """Hook that stops the run at a step (on_step) or after an epoch's last checkpoint (on_checkpoint)."""

    def __init__(self, step: int | None = None, epoch_checkpoint: int | None = None):
        self.step, self.epoch_checkpoint, self.checkpoints = step, epoch_checkpoint, 0

    def on_step(self, record):
        if record["step"] == self.step:
            raise Interrupt(f"step {self.step}")

    def on_checkpoint(self, path, best):
        if not best and self.epoch_checkpoint is not None:
            self.checkpoints += 1
            if self.checkpoints == self.epoch_checkpoint:
                raise Interrupt(f"after epoch {self.epoch_checkpoint}")


# --- resume --------------------------------------------------------------------------------------

@pytest.mark.parametrize("interrupt", [InterruptAt(epoch_checkpoint=1), InterruptAt(step=6)],
                         ids=["after-epoch-1", "mid-epoch-2"])
def test_interrupted_run_resumes_to_the_same_losses(trained, make_config, tmp_path, interrupt):
    reference_dir, _ = trained(*TWO_EPOCHS)
    cfg = make_config(*TWO_EPOCHS)
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(cfg, run_dir, progress=False, hooks=[interrupt])
    assert load(run_dir / "checkpoint_last.pt")["step"] == STEPS_PER_EPOCH
    summary = train(cfg, run_dir, resume=True, progress=False)
    assert summary["step"] == 2 * STEPS_PER_EPOCH
    # Steps 5 and 6 of the mid-epoch interruption were logged, dropped and redone: no duplicates.
    assert training_columns(read_jsonl(run_dir / "metrics.jsonl")) == \
        training_columns(read_jsonl(reference_dir / "metrics.jsonl"))
    assert training_columns(read_jsonl(run_dir / "evaluations.jsonl")) == training_columns(
        read_jsonl(reference_dir / "evaluations.jsonl"))
    assert same_weights(load(run_dir / "checkpoint_last.pt")["model"],
                        load(reference_dir / "checkpoint_last.pt")["model"])


def test_extending_a_finished_run_follows_the_longer_schedule(trained, make_config, tmp_path, caplog):
    """1 epoch, then resumed with 2: the new steps take the 2-epoch schedule's rates (a warning says the
    first epoch followed the 1-epoch schedule), so only the losses of epoch 1 match a 2-epoch run."""
    reference_dir, _ = trained(*TWO_EPOCHS)
    reference = read_jsonl(reference_dir / "metrics.jsonl")
    run_dir = tmp_path / "run"
    train(make_config("train.epochs=1"), run_dir, progress=False)
    with caplog.at_level(logging.WARNING, logger="pgnet.train"):
        train(make_config(*TWO_EPOCHS), run_dir, resume=True, progress=False)
    assert any("planned for 4 steps as one of 8" in r.getMessage() for r in caplog.records)
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    one_epoch = OptimConfig(lr=1e-3, warmup_steps=2)
    assert [r["lr"] for r in records[:4]] == pytest.approx([1e-3 * lr_factor(one_epoch, s, 4) for s in range(4)])
    assert [r["lr"] for r in records[4:]] == pytest.approx([r["lr"] for r in reference[4:]])
    assert records[4]["lr"] == pytest.approx(1e-3 * lr_factor(one_epoch, 4, 8)) and records[4]["lr"] > 0
    assert losses(records[:4]) == losses(reference[:4])
    assert losses(records[4:]) != losses(reference[4:])  # epoch 1 ran on other learning rates


@pytest.mark.slow
@pytest.mark.parametrize("first_leg", [("train.epochs=1",), ("train.epochs=2", "train.max_steps=6")],
                         ids=["one-epoch", "max-steps-mid-epoch"])
def test_extending_a_constant_schedule_run_equals_the_longer_run(trained, make_config, tmp_path, first_leg):
    """With a constant rate the schedule does not depend on the run's length: an extended run (also one
    that max_steps cut mid-epoch, which goes on with that epoch's batches) equals the longer run."""
    constant = ("optim.schedule=constant",)
    straight_dir, _ = trained(*constant, *TWO_EPOCHS)
    run_dir = tmp_path / "extended"
    train(make_config(*constant, *first_leg), run_dir, progress=False)
    summary = train(make_config(*constant, *TWO_EPOCHS), run_dir, resume=True, progress=False)
    assert (summary["step"], summary["epoch"]) == (8, 2)
    assert training_columns(read_jsonl(run_dir / "metrics.jsonl")) == \
        training_columns(read_jsonl(straight_dir / "metrics.jsonl"))
    assert same_weights(load(run_dir / "checkpoint_last.pt")["model"],
                        load(straight_dir / "checkpoint_last.pt")["model"])


# --- time limit ----------------------------------------------------------------------------------

class StepClock:
    """A clock that moves one second per training step and stands still otherwise, so that a
    time-limited run on it is as reproducible as one planned in steps."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def on_step(self, record):
        self.now += 1.0


TIMED = ("train.time_limit=0.25", "train.eval_every=100")  # 15 s of the step clock; train.epochs=1 plans 4 steps


@pytest.fixture(scope="module")
def timed_run(make_config, tmp_path_factory, one_thread):
    run_dir = tmp_path_factory.mktemp("timed") / "run"
    clock = StepClock()
    return run_dir, train(make_config(*TIMED), run_dir, progress=False, hooks=[clock], clock=clock)


def test_a_time_limit_fits_the_schedule_to_the_steps_that_fit(timed_run, make_config):
    """The run goes on past train.epochs=1 until its 15 s are up; from the first estimate (step 5) on, the
    rates are those of a 15-step run (2 warm-up steps, then a cosine to 0), and the last evaluation and
    checkpoint close the run mid-epoch."""
    run_dir, summary = timed_run
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert summary["step"] == len(records) == 15 and summary["epoch"] == 4  # 3 epochs of 4 steps, then 3
    lr = make_config().optim.lr
    cosine = [lr * 0.5 * (1 + math.cos(math.pi * (i - 2) / 13)) for i in range(5, 15)]
    assert [r["lr"] for r in records[5:]] == pytest.approx(cosine, rel=1e-9, abs=1e-15)
    assert [e["step"] for e in read_jsonl(run_dir / "evaluations.jsonl")] == [15]
    last = load(run_dir / "checkpoint_last.pt")
    assert (last["total_steps"], last["epoch_batches_done"], last["time_used"]) == (15, 3, 15.0)


def test_a_resumed_time_limited_run_spends_what_was_left(timed_run, make_config, tmp_path):
    reference_dir, _ = timed_run
    cfg, run_dir, clock = make_config(*TIMED), tmp_path / "run", StepClock()
    with pytest.raises(Interrupt):
        train(cfg, run_dir, progress=False, hooks=[clock, InterruptAt(epoch_checkpoint=2)], clock=clock)
    assert load(run_dir / "checkpoint_last.pt")["time_used"] == 8.0
    summary = train(cfg, run_dir, resume=True, progress=False, hooks=[clock], clock=clock)
    assert summary["step"] == 15
    assert training_columns(read_jsonl(run_dir / "metrics.jsonl")) == \
        training_columns(read_jsonl(reference_dir / "metrics.jsonl"))


def test_a_run_planned_in_epochs_resumed_with_a_time_limit_gets_the_whole_limit(trained, make_config, tmp_path):
    """Its checkpoint has spent no time limit: 5 steps are measured, then the 9 s fit 9 steps in all."""
    reference_dir, _ = trained(*TWO_EPOCHS)
    run_dir = Path(shutil.copytree(reference_dir, tmp_path / "run"))
    clock = StepClock()
    summary = train(make_config(*TWO_EPOCHS, "train.time_limit=0.15"), run_dir, resume=True, progress=False,
                    hooks=[clock], clock=clock)
    assert summary["step"] == 2 * STEPS_PER_EPOCH + 9 and clock.now == 9


def test_a_time_limit_is_for_the_single_process_trainer(make_config):
    with pytest.raises(ConfigError, match="single-process trainer"):
        make_config("train.time_limit=10", "pipeline.stages=2")
    with pytest.raises(ConfigError, match="train.time_limit"):
        make_config("train.time_limit=-1")


def test_existing_run_dir_without_resume_is_refused(trained, make_config):
    run_dir, _ = trained("train.epochs=1", "train.seed=1")
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(FileExistsError, match="already holds a run.*--resume"):
        train(make_config("train.epochs=1", "train.seed=1"), run_dir, progress=False)
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_resume_without_a_checkpoint_says_so(make_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint_last.pt.*drop --resume"):
        train(make_config(), tmp_path / "empty", resume=True, progress=False)


def test_resume_with_another_model_is_refused(trained, make_config, tmp_path):
    source, _ = trained("train.epochs=1", "train.seed=1")
    run_dir = Path(shutil.copytree(source, tmp_path / "run"))
    with pytest.raises(ValueError, match="different model config.*config.yaml"):
        train(make_config("train.epochs=1", "train.seed=1", "model.head_channels=8"), run_dir, resume=True,
              progress=False)


def test_resuming_weights_only_points_to_the_pipeline_shards(trained, make_config, tmp_path):
    """A finished pipeline run's checkpoint_last.pt holds weights only (its state is in stage shards)."""
    source, _ = trained("train.epochs=1", "train.seed=1")
    run_dir = Path(shutil.copytree(source, tmp_path / "run"))
    weights = {k: v for k, v in load(run_dir / "checkpoint_last.pt").items() if k not in ("optimizer", "scheduler")}
    torch.save(weights, run_dir / "checkpoint_last.pt")
    with pytest.raises(ValueError, match="finished pipeline run.*pipeline.stages >= 1"):
        train(make_config("train.epochs=2", "train.seed=1"), run_dir, resume=True, progress=False)


