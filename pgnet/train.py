"""The single-process trainer: `train(cfg, run_dir)`. Also the reference for pipeline training.

A run directory holds `config.yaml`, `metrics.jsonl` (one record per step),
`evaluations.jsonl`, and `checkpoint_last.pt` / `checkpoint_best.pt`. The run is
deterministic for a seed; `resume=True` continues from `checkpoint_last.pt`, so an
interrupted run ends exactly as an uninterrupted one.

Resuming with other `train.epochs` / `train.max_steps` extends (or shortens) the run: the
steps still to do follow the LR schedule of the new length, as if the run had been
planned that long; the steps already done keep the old schedule's rates (a warning says so).

With `train.time_limit` the run's length is the steps that fit in its minutes, re-estimated as it
goes (`pgnet.time_budget`); a resumed run spends what is left of them.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from pgnet.atomic import write_json_atomic
from pgnet.checkpoint import load_checkpoint, save_atomic
from pgnet.config import Config, config_from_dict, save_config
from pgnet.data.dataset import CocoKeypoints, collate_samples
from pgnet.data.order import epoch_batches, steps_per_epoch
from pgnet.data.source import resolve_data_root
from pgnet.engine import autocast, evaluate_model, resolve_device, set_memory_format, to_device
from pgnet.losses import PGNetLoss
from pgnet.metrics_log import EVALUATIONS_FILE, METRICS_FILE, JsonlLog, step_record
from pgnet.models import PGNet, build_model
from pgnet.optim import build_optimizer, build_scheduler, fit_schedule
from pgnet.progress import progress_bar
from pgnet.time_budget import TimeBudget

log = logging.getLogger("pgnet.train")

LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"
BEST_PREDICTIONS = "val_predictions_best.json"  # COCO results of the best evaluation
BEST_METRIC = "keypoints/AP"


class TrainHooks(Protocol):
    """What a tracker (MLflow, Tune) sees of a run. Every method is optional."""

    def on_step(self, record: dict[str, Any]) -> None: ...
    def on_eval(self, record: dict[str, Any]) -> None: ...
    def on_checkpoint(self, path: Path, best: bool) -> None: ...


def seeded_model(cfg: Config) -> PGNet:
    """The model every trainer starts from: built right after seeding, so it depends on the seed only."""
    torch.manual_seed(cfg.train.seed)
    return build_model(cfg.model)


def training_datasets(cfg: Config, progress: bool = True) -> tuple[CocoKeypoints, CocoKeypoints]:
    root = resolve_data_root(cfg.data, progress=progress)
    common = dict(input_size=tuple(cfg.data.input_size), max_people=cfg.data.max_people, seed=cfg.train.seed,
                  cache=cfg.data.cache == "ram", progress=progress)
    train_set = CocoKeypoints(root, cfg.data.train_split, augment=cfg.data.augment, train=True, **common)
    val_set = CocoKeypoints(root, cfg.data.val_split, train=False, **common)
    if len(val_set) == 0:  # found now, not after the first epoch's training
        raise ValueError(f"the validation split {cfg.data.val_split!r} of {root} has no images, and every run "
                         "evaluates on it; add images (data.synthetic.val_images for the synthetic set)")
    return train_set, val_set


def epoch_loader(dataset: CocoKeypoints, cfg: Config, epoch: int,
                 batches: list[np.ndarray] | None = None) -> DataLoader:
    """The DataLoader of one training epoch with `data.workers` processes: the epoch's augmentation and its
    batches (`epoch_batches`; give `batches`, a part of them, to resume or stop mid-epoch)."""
    dataset.set_epoch(epoch)
    if batches is None:
        batches = epoch_batches(len(dataset), cfg.train.batch_size, cfg.train.seed, epoch)
    return DataLoader(dataset, batch_sampler=[b.tolist() for b in batches], collate_fn=collate_samples,
                      num_workers=cfg.data.workers)


def check_new_run_dir(run_dir: str | Path) -> None:
    """A run starts only in a directory that holds no run (its step log), unless resumed."""
    if (Path(run_dir) / METRICS_FILE).exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or pick a new --run-dir")


def check_resumable(run_dir: str | Path) -> None:
    """`--resume` needs the run's last checkpoint; said before any data is read or generated."""
    if not (Path(run_dir) / LAST_CHECKPOINT).is_file():
        raise FileNotFoundError(f"--resume: {run_dir} has no {LAST_CHECKPOINT} to continue from; "
                                "drop --resume to start a new run there")


def total_steps(cfg: Config, num_images: int) -> int:
    per_epoch = steps_per_epoch(num_images, cfg.train.batch_size)
    if per_epoch == 0:
        raise ValueError(f"the training split has {num_images} images, fewer than train.batch_size="
                         f"{cfg.train.batch_size}; lower the batch size or add images")
    steps = per_epoch * cfg.train.epochs
    return min(steps, cfg.train.max_steps) if cfg.train.max_steps > 0 else steps


def _call(hooks: list, name: str, *args) -> None:
    for hook in hooks:
        method = getattr(hook, name, None)
        if method is not None:
            method(*args)


@dataclass
class BadSampleBudget:
    """Counts skipped images and stops the run once they exceed `max_fraction` of those seen."""

    max_fraction: float
    seen: int = 0
    bad: int = 0
    min_seen: int = 20  # judge the fraction mid-epoch only after this many images

    def add(self, seen: int, bad: int) -> None:
        self.seen += seen
        self.bad += bad
        if self.seen >= self.min_seen:
            self.check()

    def check(self) -> None:
        """Raise if too many images were bad; also called at the end of an epoch, whatever `seen` is."""
        if self.bad and self.bad > self.max_fraction * max(self.seen, 1):
            raise RuntimeError(
                f"{self.bad} of {self.seen} images could not be read (more than data.max_bad_fraction="
                f"{self.max_fraction}); the log names each one. Fix or remove them, or raise the limit.")


@dataclass
class RunState:
    epoch: int = 0  # the last epoch trained (complete unless `epoch_batches_done` says otherwise)
    step: int = 0  # completed optimiser steps
    epoch_batches_done: int = 0  # > 0: `epoch` was cut short (max_steps) after this many batches
    best: float = float("-inf")
    total_steps: int = 0  # the length the run is planned for (its LR schedule's)
    time_used: float = 0.0  # seconds of train.time_limit spent by the end of the last epoch trained
    history: list = field(default_factory=list)


def train(cfg: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
          hooks: list | None = None, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Train and evaluate; returns the last evaluation's metrics plus `step`, `epoch` and
    `train/skipped_images` (unreadable training images, each logged and left out of its batch).
    `clock` measures `train.time_limit` (seconds)."""
    hooks = hooks or []
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    if resume:
        check_resumable(run_dir)
    else:
        check_new_run_dir(run_dir)
    train_set, val_set = training_datasets(cfg, progress)
    planned = total_steps(cfg, len(train_set))

    model = set_memory_format(seeded_model(cfg).to(device), cfg.train.channels_last)
    criterion = PGNetLoss(cfg.loss, guidance=cfg.model.guidance)
    optimizer = build_optimizer(cfg.optim, model.named_parameters())
    scheduler = build_scheduler(cfg.optim, optimizer, planned)
    metrics_log, eval_log = JsonlLog(run_dir / METRICS_FILE), JsonlLog(run_dir / EVALUATIONS_FILE)

    state = RunState(total_steps=planned)
    if resume:
        state = _restore(run_dir / LAST_CHECKPOINT, cfg, model, optimizer, scheduler, planned)
        metrics_log.truncate_after(state.step)
        eval_log.truncate_after(state.step)
        log.info("resumed from step %d (epoch %d)", state.step, state.epoch)
    save_config(cfg, run_dir / "config.yaml")

    budget = BadSampleBudget(cfg.data.max_bad_fraction)
    timer = TimeBudget(cfg.train.time_limit, state.step, state.time_used, clock) if cfg.train.time_limit > 0 else None
    if timer:
        _replan(timer, cfg, optimizer, scheduler, state)
    last_metrics: dict[str, float] = {}
    model.train()
    while state.step < state.total_steps:
        done = state.epoch_batches_done  # a run extended after max_steps cut its epoch short goes on with it
        epoch = state.epoch if done else state.epoch + 1
        epoch_plan = epoch_batches(len(train_set), cfg.train.batch_size, cfg.train.seed, epoch)
        loader = epoch_loader(train_set, cfg, epoch, epoch_plan[done:])
        consumed = 0
        tick = time.perf_counter()
        bar = progress_bar(loader, enabled=progress, desc=f"epoch {epoch}", unit="step")
        for images, targets, _, num_bad in bar:
            consumed += 1
            budget.add(len(images) + num_bad, num_bad)
            if len(images) == 0:
                continue
            images, targets = images.to(device), to_device(targets, device)
            with autocast(cfg.train.precision, device):
                outputs = model(images)
            loss, terms = criterion(outputs, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {state.step + 1}; lower optim.lr "
                                         "or check the data (the last metrics.jsonl record shows the terms)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            state.step += 1
            now = time.perf_counter()
            record = step_record(state.step, epoch, loss.item(), {k: v.item() for k, v in terms.items()}, lr,
                                 len(images) / max(now - tick, 1e-9))
            tick = now
            metrics_log.append(record)
            _call(hooks, "on_step", record)
            if timer:
                _replan(timer, cfg, optimizer, scheduler, state)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}", ends_at_step=state.total_steps)
            if state.step >= state.total_steps:  # mid-epoch if need be: max_steps, or the time limit running out
                break
        budget.check()  # the end of a pass: judge the fraction even on a data set smaller than min_seen
        if budget.bad:
            log.warning("%d of %d training images so far could not be read and were skipped", budget.bad, budget.seen)
        state.epoch = epoch
        state.epoch_batches_done = (done + consumed) % len(epoch_plan)
        finished = state.step >= state.total_steps
        if finished or epoch % cfg.train.eval_every == 0:
            metrics, results = evaluate_model(model, val_set, cfg.eval, device, progress=progress,
                                              precision=cfg.train.precision)
            last_metrics = metrics
            eval_record = {"step": state.step, "epoch": epoch, **metrics}
            eval_log.append(eval_record)
            _call(hooks, "on_eval", eval_record)
            log.info("epoch %d: keypoints/AP %.4f bbox/AP %.4f", epoch, metrics.get("keypoints/AP", -1),
                     metrics.get("bbox/AP", -1))
            if metrics.get(BEST_METRIC, float("-inf")) > state.best:
                state.best = metrics[BEST_METRIC]
                write_json_atomic(results, run_dir / BEST_PREDICTIONS)
                path = save_atomic(_checkpoint(cfg, model, optimizer, scheduler, state), run_dir / BEST_CHECKPOINT)
                _call(hooks, "on_checkpoint", path, True)
        if timer:
            state.time_used = timer.used()  # what a resumed run has left to spend
        if finished or epoch % cfg.train.checkpoint_every == 0:
            path = save_atomic(_checkpoint(cfg, model, optimizer, scheduler, state), run_dir / LAST_CHECKPOINT)
            _call(hooks, "on_checkpoint", path, False)
    return {**last_metrics, "step": state.step, "epoch": state.epoch, "train/skipped_images": budget.bad}


def _checkpoint(cfg: Config, model, optimizer, scheduler, state: RunState) -> dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "config": cfg.to_dict(),
            "epoch": state.epoch, "step": state.step, "best": state.best, "total_steps": state.total_steps,
            "epoch_batches_done": state.epoch_batches_done, "time_used": state.time_used}


def _replan(timer: TimeBudget, cfg: Config, optimizer, scheduler, state: RunState) -> None:
    """`state.total_steps` by `train.time_limit` after `state.step` steps, the LR schedule fitted to it."""
    planned = timer.plan(state.step, state.total_steps)
    if planned != state.total_steps:
        fit_schedule(cfg.optim, optimizer, scheduler, state.step, planned)
        state.total_steps = planned
    if state.step >= planned:
        log.info("train.time_limit: %.2f of %g minutes used; the run ends at step %d",
                 timer.used() / 60, cfg.train.time_limit, planned)


def _restore(path: Path, cfg: Config, model, optimizer, scheduler, steps: int) -> RunState:
    ckpt = load_checkpoint(path)
    saved = config_from_dict(ckpt["config"], str(path))
    if saved.model != cfg.model:
        raise ValueError(f"{path} was trained with a different model config ({saved.model}); "
                         "resume with the run's own config.yaml")
    if "optimizer" not in ckpt:
        raise ValueError(f"{path} holds the weights of a finished pipeline run, not a resumable state; "
                         "resume it with its pipeline.stages >= 1 (any S): it continues from the stage "
                         f"checkpoints under {path.parent / 'ray'}")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    step = ckpt["step"]
    planned = ckpt.get("total_steps", steps)
    if cfg.train.time_limit > 0:  # the saved plan, which the time left re-fits
        steps = planned
    elif planned != steps:
        log.warning("resuming a run planned for %d steps as one of %d (train.epochs or train.max_steps changed): "
                    "steps %d.. follow the LR schedule of a %d-step run", planned, steps, step + 1, steps)
    fit_schedule(cfg.optim, optimizer, scheduler, step, steps)
    return RunState(epoch=ckpt["epoch"], step=step, best=ckpt.get("best", float("-inf")), total_steps=steps,
                    epoch_batches_done=ckpt.get("epoch_batches_done", 0), time_used=ckpt.get("time_used", 0.0))
