"""RunState: where a run stands, the same words in every trainer's checkpoints."""
from __future__ import annotations

import math

from pgnet.run.state import RunState


def test_state_round_trips_through_a_checkpoint_dict():
    state = RunState(epoch=3, step=40, epoch_batches_done=2, epoch_rows_done=[8, 8], best=0.25, total_steps=90,
                     time_used=12.5)
    assert RunState.from_dict({**state.to_dict(), "model": {}, "config": {}}) == state


def test_an_older_checkpoint_without_the_newer_fields_keeps_their_defaults():
    state = RunState.from_dict({"epoch": 2, "step": 10, "best": 0.1})
    assert (state.epoch, state.step, state.best, state.epoch_batches_done, state.epoch_rows_done) == (2, 10, 0.1, 0, [])
    assert math.isinf(RunState().best) and RunState().best < 0


def test_a_new_epoch_follows_a_complete_one_and_a_cut_epoch_goes_on():
    assert RunState(epoch=2).next_epoch() == (3, 0)
    assert RunState(epoch=2, epoch_batches_done=5).next_epoch() == (2, 5)


def test_an_epoch_is_cut_only_when_the_run_ended_inside_it():
    state = RunState(step=10, total_steps=10)
    state.end_epoch(1, batches_done=3, planned_batches=4, rows_done=[12])
    assert (state.epoch, state.epoch_batches_done, state.epoch_rows_done) == (1, 3, [12])
    state = RunState(step=10, total_steps=10)
    state.end_epoch(1, batches_done=4, planned_batches=4)
    assert (state.epoch_batches_done, state.epoch_rows_done) == (0, [])
    state = RunState(step=7, total_steps=10)  # fewer batches than planned (bad images) but the run goes on
    state.end_epoch(1, batches_done=3, planned_batches=4)
    assert state.epoch_batches_done == 0


def test_more_to_do_counts_steps_epochs_and_a_cut_epoch():
    assert RunState(step=3, total_steps=8, epoch=1).more_to_do(epochs=2)
    assert not RunState(step=8, total_steps=8, epoch=1).more_to_do(epochs=2)
    assert not RunState(step=6, total_steps=8, epoch=2).more_to_do(epochs=2)  # epochs done, steps left (bad images)
    assert RunState(step=6, total_steps=8, epoch=2, epoch_batches_done=1).more_to_do(epochs=2)
    assert RunState(step=6, total_steps=8, epoch=5).more_to_do(epochs=2, by_time=True)  # a time-limited run
