"""The run core both trainers drive: step log, epoch-end rule, best and last checkpoints, hooks."""
from __future__ import annotations

import json

import torch

from pgnet.config import Config
from pgnet.run.checkpoint import load_checkpoint
from pgnet.run.metrics_log import read_jsonl
from pgnet.run.state import RunState
from pgnet.run.training_run import TrainingRun


class Recorder:
    def __init__(self):
        self.calls = []

    def on_step(self, record):
        self.calls.append(("step", record["step"]))

    def on_eval(self, record):
        self.calls.append(("eval", record["step"]))

    def on_epoch_end(self, epoch):
        self.calls.append(("epoch", epoch))

    def on_checkpoint(self, path, best):
        self.calls.append(("checkpoint", path.name, best))


def config(epochs: int = 5, eval_every: int = 2, checkpoint_every: int = 3) -> Config:
    cfg = Config()
    cfg.train.epochs, cfg.train.eval_every, cfg.train.checkpoint_every = epochs, eval_every, checkpoint_every
    return cfg


def weights(value: float) -> dict:
    return {"model": {"w": torch.full((2,), value)}}


def drive(run: TrainingRun, aps: dict[int, float], steps_per_epoch: int = 2) -> list[tuple]:
    """A trainer's loop without a model: per epoch, its steps, then what the rule asks for."""
    decisions = []
    while run.more_steps():
        epoch, done = run.state.next_epoch()
        batches = done
        while batches < steps_per_epoch and not run.finished:
            run.step_done(epoch, loss=1.0 / (run.state.step + 1), terms={"hm": 0.5}, lr=0.1, images_per_s=10.0)
            batches += 1
        end = run.end_epoch(epoch, batches, steps_per_epoch)
        decisions.append((epoch, end.evaluate, end.checkpoint, end.finished))
        if end.evaluate:
            run.evaluated({"keypoints/AP": aps[epoch]}, [{"image_id": epoch}], lambda: weights(aps[epoch]))
        if end.checkpoint:
            run.save_last({**weights(-epoch), "config": run.cfg.to_dict(), **run.state.to_dict()})
    return decisions


def test_evaluations_and_checkpoints_every_n_epochs_and_at_the_end(tmp_path):
    run = TrainingRun(config(), tmp_path)
    run.begin(RunState(total_steps=10))
    decisions = drive(run, {2: 0.1, 4: 0.3, 5: 0.2})
    assert decisions == [(1, False, False, False), (2, True, False, False), (3, False, True, False),
                         (4, True, False, False), (5, True, True, True)]
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == list(range(1, 11))
    assert [(r["epoch"], r["keypoints/AP"]) for r in read_jsonl(tmp_path / "evaluations.jsonl")] == \
        [(2, 0.1), (4, 0.3), (5, 0.2)]
    assert run.summary() == {"keypoints/AP": 0.2, "step": 10, "epoch": 5, "train/skipped_images": 0}


def test_the_best_evaluation_keeps_its_weights_and_results(tmp_path):
    run = TrainingRun(config(), tmp_path)
    run.begin(RunState(total_steps=10))
    drive(run, {2: 0.1, 4: 0.3, 5: 0.2})
    best = torch.load(tmp_path / "checkpoint_best.pt", weights_only=True)
    torch.testing.assert_close(best["model"]["w"], torch.full((2,), 0.3))  # epoch 4's, not the later worse one
    assert json.loads((tmp_path / "val_predictions_best.json").read_text()) == [{"image_id": 4}]
    last = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert (last["epoch"], last["step"], last["best"]) == (5, 10, 0.3)


def test_hooks_see_every_step_evaluation_epoch_and_checkpoint(tmp_path):
    hooks = Recorder()
    run = TrainingRun(config(epochs=2, eval_every=1, checkpoint_every=2), tmp_path, hooks=[hooks])
    run.begin(RunState(total_steps=4))
    drive(run, {1: 0.2, 2: 0.1})
    assert hooks.calls == [("step", 1), ("step", 2), ("epoch", 1), ("eval", 2), ("checkpoint", "checkpoint_best.pt", True),
                           ("step", 3), ("step", 4), ("epoch", 2), ("eval", 4),
                           ("checkpoint", "checkpoint_last.pt", False)]


def test_a_worker_that_is_not_the_writer_keeps_the_state_and_writes_nothing(tmp_path):
    run = TrainingRun(config(), tmp_path / "run", writer=False)
    run.begin(RunState(total_steps=10))
    drive(run, {2: 0.1, 4: 0.3, 5: 0.2})
    assert (run.state.step, run.state.epoch, run.state.best) == (10, 5, 0.3)
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_drops_the_log_records_it_redoes(tmp_path):
    first = TrainingRun(config(epochs=1, eval_every=1), tmp_path)
    first.begin(RunState(total_steps=4))
    drive(first, {1: 0.1}, steps_per_epoch=4)
    resumed = TrainingRun(config(epochs=1, eval_every=1), tmp_path)
    resumed.begin(RunState(epoch=0, step=2, epoch_batches_done=2, total_steps=4))
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    assert read_jsonl(tmp_path / "evaluations.jsonl") == []
    assert (tmp_path / "config.yaml").exists()


def test_a_cut_epoch_is_remembered_and_continued(tmp_path):
    run = TrainingRun(config(epochs=2, eval_every=5, checkpoint_every=5), tmp_path)
    run.begin(RunState(total_steps=3))  # max_steps inside epoch 2 of 2 batches each
    assert drive(run, {2: 0.1}) == [(1, False, False, False), (2, True, True, True)]
    assert (run.state.epoch, run.state.epoch_batches_done) == (2, 1)
    assert run.state.next_epoch() == (2, 1)
