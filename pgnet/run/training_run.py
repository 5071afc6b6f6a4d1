"""One training run's bookkeeping, the same for every trainer: logs, the epoch-end rule, checkpoints.

The single-process trainer (`pgnet.train`) and each pipeline worker (`pipelines.training.worker`)
drive a `TrainingRun` from their own loops. It owns the run directory's files (`RunDir`), the run
state, the bad-sample budget and the hooks that trackers use, and decides at each epoch's end
whether to evaluate and to checkpoint. Only the writer (the single process, the pipeline's rank 0)
touches files; every other worker keeps the same state in step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from pgnet.atomic import write_json_atomic
from pgnet.config import Config
from pgnet.errors import TrainingError
from pgnet.run.bad_samples import BadSampleBudget
from pgnet.run.layout import BEST_METRIC, RunDir
from pgnet.run.metrics_log import JsonlLog, step_record, wall_time
from pgnet.run.state import RunState
from pgnet.torch_files import save_atomic, save_keeping_previous

log = logging.getLogger("pgnet.run")


class TrainHooks(Protocol):
    """What a tracker (MLflow, Tune) sees of a run. Every method is optional."""

    def on_step(self, record: dict[str, Any]) -> None: ...
    def on_eval(self, record: dict[str, Any]) -> None: ...
    def on_epoch_end(self, epoch: int) -> None: ...
    def on_checkpoint(self, path: Path, best: bool) -> None: ...


@dataclass(frozen=True)
class EpochEnd:
    """What the run does now that an epoch ended."""

    finished: bool  # the run's last epoch
    evaluate: bool  # every `train.eval_every` epochs, and at the end
    checkpoint: bool  # every `train.checkpoint_every` epochs, and at the end


class TrainingRun:
    def __init__(self, cfg: Config, run_dir: str | Path, *, writer: bool = True, hooks: list | None = None):
        self.cfg = cfg
        self.dir = RunDir(Path(run_dir))
        self.writer = writer
        self.hooks = list(hooks or [])
        self.state = RunState()
        self.budget = BadSampleBudget(cfg.data.max_bad_fraction)
        self.metrics_log = JsonlLog(self.dir.metrics) if writer else None
        self.eval_log = JsonlLog(self.dir.evaluations) if writer else None
        self.last_metrics: dict[str, float] = {}

    def begin(self, state: RunState) -> None:
        """Start (or resume, at `state`): the logs drop records a resumed run redoes; the config is written."""
        self.state = state
        if self.writer:
            self.metrics_log.truncate_after(state.step)
            self.eval_log.truncate_after(state.step)
            self.dir.write_config(self.cfg)

    # --- steps -------------------------------------------------------------------------------------------

    def more_steps(self) -> bool:
        return self.state.more_to_do(self.cfg.train.epochs, by_time=self.cfg.train.time_limit > 0)

    @property
    def finished(self) -> bool:
        return self.state.finished

    def count_samples(self, seen: int, bad: int) -> None:
        """Images read and images skipped as unreadable: the budget stops the run when too many are bad."""
        self.budget.add(seen, bad)

    def step_done(self, epoch: int, loss: float, terms: dict[str, float], lr: float,
                  images_per_s: float, extra: dict[str, float] | None = None) -> dict[str, Any]:
        """One optimiser step more: its record goes to `metrics.jsonl` and the hooks."""
        self.state.step += 1
        record = step_record(self.state.step, epoch, loss, terms, lr, images_per_s, extra)
        if self.writer:
            self.metrics_log.append(record)
        self._call("on_step", record)
        return record

    def step_checkpoint_due(self, batches_done: int, planned_batches: int) -> bool:
        """Whether to checkpoint now, mid-epoch (`train.checkpoint_every_steps`): not at an epoch's last batch
        nor at the run's end, where the epoch-end checkpoint follows."""
        every = self.cfg.train.checkpoint_every_steps
        return every > 0 and self.state.step % every == 0 and batches_done < planned_batches and not self.finished

    # --- epochs --------------------------------------------------------------------------------------------

    def end_epoch(self, epoch: int, batches_done: int, planned_batches: int,
                  rows_done: list[int] | None = None) -> EpochEnd:
        """`epoch` ended after `batches_done` of its `planned_batches`: judge the bad-image budget, mark
        the epoch complete or cut, and say whether to evaluate and checkpoint."""
        self.budget.check()  # the end of a pass: judge the fraction even on a data set smaller than min_seen
        if self.budget.bad and self.writer:
            log.warning("%d of %d training images so far could not be read and were skipped",
                        self.budget.bad, self.budget.seen)
        self.state.end_epoch(epoch, batches_done, planned_batches, rows_done)
        # bad images make pipeline epochs shorter (batches stay full), so the epoch count can end the run first
        finished = self.finished or (self.cfg.train.time_limit <= 0 and epoch >= self.cfg.train.epochs
                                     and not self.state.epoch_batches_done)
        train = self.cfg.train
        self._call("on_epoch_end", epoch)
        return EpochEnd(finished, finished or epoch % train.eval_every == 0,
                        finished or epoch % train.checkpoint_every == 0)

    def evaluated(self, metrics: dict[str, float], results: list[dict],
                  best_checkpoint: Callable[[], dict[str, Any]]) -> bool:
        """Log an evaluation; when it is the best so far (`keypoints/AP`), keep its COCO results and save
        `best_checkpoint()` as `checkpoint_best.pt`. Returns whether it was the best."""
        self.last_metrics = metrics
        record = {"step": self.state.step, "epoch": self.state.epoch, **metrics, "time": wall_time()}
        if self.writer:
            self.eval_log.append(record)
        self._call("on_eval", record)
        log.info("epoch %d: keypoints/AP %.4f bbox/AP %.4f", self.state.epoch, metrics.get("keypoints/AP", -1),
                 metrics.get("bbox/AP", -1))
        if not metrics.get(BEST_METRIC, float("-inf")) > self.state.best:
            return False
        self.state.best = metrics[BEST_METRIC]
        if self.writer:
            write_json_atomic(results, self.dir.best_predictions)
            self._call("on_checkpoint", save_atomic(best_checkpoint(), self.dir.best_checkpoint), True)
        return True

    def save_last(self, checkpoint: dict[str, Any]) -> None:
        """`checkpoint_last.pt` (after the best: its `best` includes the epoch's evaluation); the one it
        replaces stays as `checkpoint_previous.pt`, for a resume that finds the last one damaged."""
        if not self.writer:
            return
        try:
            path = save_keeping_previous(checkpoint, self.dir.last_checkpoint, self.dir.previous_checkpoint)
        except OSError as err:
            raise TrainingError(
                f"cannot write {self.dir.last_checkpoint} ({err.strerror or err}) at step {self.state.step}; the "
                "checkpoint before it is intact: free disk space (or fix the folder), then continue with "
                "`pgnet train --resume`") from None
        self._call("on_checkpoint", path, False)

    def summary(self) -> dict[str, Any]:
        """The last evaluation's metrics, the step and epoch reached, and the training images skipped."""
        return {**self.last_metrics, "step": self.state.step, "epoch": self.state.epoch,
                "train/skipped_images": self.budget.bad}

    def _call(self, name: str, *args) -> None:
        for hook in self.hooks:
            method = getattr(hook, name, None)
            if method is not None:
                method(*args)
