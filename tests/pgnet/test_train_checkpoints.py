"""Checkpoints every N steps, a damaged last checkpoint, a disk that fails mid-write: the single-process
trainer loses at most the steps since its last good checkpoint, and says what happened."""
from __future__ import annotations

import errno
import logging

import pytest
import torch

from pgnet.errors import TrainingError
from pgnet.run.metrics_log import read_jsonl
from pgnet.train import train
from tests.pgnet.test_train_resume import Interrupt, InterruptAt
from tests.support.training import TWO_EPOCHS, load, same_weights, training_columns

pytestmark = pytest.mark.usefixtures("one_thread")

EVERY_3 = (*TWO_EPOCHS, "train.checkpoint_every_steps=3")  # 4 steps an epoch: checkpoints at 3, 4 (epoch), 6, 8


def assert_same_run(run_dir, reference_dir) -> None:
    assert training_columns(read_jsonl(run_dir / "metrics.jsonl")) == \
        training_columns(read_jsonl(reference_dir / "metrics.jsonl"))
    assert same_weights(load(run_dir / "checkpoint_last.pt")["model"],
                        load(reference_dir / "checkpoint_last.pt")["model"])


def test_a_crash_loses_only_the_steps_since_the_last_step_checkpoint(trained, make_config, tmp_path):
    reference_dir, _ = trained(*TWO_EPOCHS)
    cfg, run_dir = make_config(*EVERY_3), tmp_path / "run"
    with pytest.raises(Interrupt):
        train(cfg, run_dir, progress=False, hooks=[InterruptAt(step=8)])  # in the last step of epoch 2
    last = load(run_dir / "checkpoint_last.pt")
    assert (last["step"], last["epoch"], last["epoch_batches_done"]) == (6, 2, 2)  # mid-epoch 2
    assert load(run_dir / "checkpoint_previous.pt")["step"] == 4
    summary = train(cfg, run_dir, resume=True, progress=False)
    assert summary["step"] == 8
    assert_same_run(run_dir, reference_dir)  # the same samples in the same order after the cut


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(trained, make_config, tmp_path, caplog):
    reference_dir, _ = trained(*TWO_EPOCHS)
    cfg, run_dir = make_config(*EVERY_3), tmp_path / "run"
    with pytest.raises(Interrupt):
        train(cfg, run_dir, progress=False, hooks=[InterruptAt(step=8)])
    last = run_dir / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # what a crash of the disk or the machine can leave
    with caplog.at_level(logging.WARNING, logger="pgnet.train"):
        summary = train(cfg, run_dir, resume=True, progress=False)
    assert "resuming from checkpoint_previous.pt instead" in caplog.text
    assert summary["step"] == 8
    assert_same_run(run_dir, reference_dir)  # steps 5..6 trained again, to the same result


def test_a_failed_checkpoint_write_is_a_clear_error_that_keeps_the_last_one(make_config, tmp_path, monkeypatch):
    """The disk fills while step 6's checkpoint is written (ENOSPC injected into torch.save): the run stops
    with a TrainingError that says what to do, and step 4's checkpoint (the epoch end) still loads and resumes."""
    cfg, run_dir = make_config(*EVERY_3), tmp_path / "run"
    real_save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == 6 and "optimizer" in obj:
            real_save(obj, path, *args, **kwargs)  # part of the file is written...
            raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk is full
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(TrainingError, match=r"cannot write .*checkpoint_last.pt \(No space left on device\) at step 6"
                                            r".*intact.*pgnet train --resume"):
        train(cfg, run_dir, progress=False)
    monkeypatch.undo()
    assert load(run_dir / "checkpoint_last.pt")["step"] == 4  # the epoch end's, untouched by the failed write
    assert not list(run_dir.glob(".checkpoint_last.pt.*.tmp"))  # the half-written file is gone
    assert train(cfg, run_dir, resume=True, progress=False)["step"] == 8
