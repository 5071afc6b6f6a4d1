"""Where a run stands: epoch, step, best metric and planned length, saved in every checkpoint.

Both trainers keep one `RunState` and save it with `to_dict`, so a checkpoint of either says
the same thing in the same words, and a resumed run picks up exactly where the saved one was.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunState:
    epoch: int = 0  # the last epoch trained (complete unless `epoch_batches_done` says otherwise)
    step: int = 0  # completed optimiser steps
    epoch_batches_done: int = 0  # > 0: `epoch` was cut short (max_steps, time limit) after this many batches
    epoch_rows_done: list[int] = field(default_factory=list)  # pipeline: rows each replica read of the cut epoch
    best: float = float("-inf")  # the best `keypoints/AP` so far
    total_steps: int = 0  # the length the run is planned for (its LR schedule's)
    time_used: float = 0.0  # seconds of train.time_limit spent by the end of the last epoch trained

    def next_epoch(self) -> tuple[int, int]:
        """(the epoch to train next, its batches already done): a cut epoch goes on where it stopped."""
        done = self.epoch_batches_done
        return (self.epoch if done else self.epoch + 1), done

    def more_to_do(self, epochs: int, by_time: bool = False) -> bool:
        """Steps remain, and (unless the run is sized by its time limit) epochs or a cut epoch do."""
        return self.step < self.total_steps and (by_time or self.epoch < epochs or self.epoch_batches_done > 0)

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    def cut_short(self, batches_done: int, planned_batches: int) -> bool:
        """Whether an epoch that ended after `batches_done` of its `planned_batches` was cut by the run's end
        (and should go on there if the run is extended), rather than complete."""
        return self.finished and batches_done < planned_batches

    def end_epoch(self, epoch: int, batches_done: int, planned_batches: int,
                  rows_done: list[int] | None = None) -> None:
        """Mark `epoch` trained: complete, or cut after `batches_done` (pipeline: `rows_done` per replica)."""
        self.epoch = epoch
        if self.cut_short(batches_done, planned_batches):
            self.epoch_batches_done, self.epoch_rows_done = batches_done, list(rows_done or [])
        else:
            self.epoch_batches_done, self.epoch_rows_done = 0, []

    def cut_at(self, epoch: int, batches_done: int, rows_done: list[int] | None = None) -> "RunState":
        """A copy that says `epoch` stopped after `batches_done` batches (pipeline: `rows_done` per replica):
        what a checkpoint written mid-epoch holds, so that a resume goes on at the next batch."""
        return dataclasses.replace(self, epoch=epoch, epoch_batches_done=batches_done,
                                   epoch_rows_done=list(rows_done or []))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> "RunState":
        """The state saved in a checkpoint; keys it lacks (older checkpoints) keep their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})
