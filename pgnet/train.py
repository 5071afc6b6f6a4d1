"""The single-process trainer: `train(cfg, run_dir)`. Also the reference for pipeline training.

A short loop over the run core (`pgnet.run`): the run directory, run state, logs and the
epoch-end rule live there and are shared with the pipeline workers. The run is deterministic
for a seed; `resume=True` continues from `checkpoint_last.pt`, so an interrupted run ends
exactly as an uninterrupted one.

Resuming with other `train.epochs` / `train.max_steps` extends (or shortens) the run: the
steps still to do follow the LR schedule of the new length, as if the run had been planned
that long; the steps already done keep the old schedule's rates (a warning says so).

With `train.time_limit` the run's length is the steps that fit in its minutes, re-estimated as it
goes (`pgnet.run.time_limit`); a resumed run spends what is left of them.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch

from pgnet.config import Config, config_from_dict
from pgnet.data.dataset import epoch_loader
from pgnet.data.order import epoch_batches
from pgnet.errors import CheckpointError, MissingFileError, TrainingError
from pgnet.evaluation.inference import evaluate_model
from pgnet.losses import PGNetLoss
from pgnet.optim import build_optimizer, build_scheduler, fit_schedule
from pgnet.progress import progress_bar
from pgnet.run.build import seeded_model, total_steps, training_datasets
from pgnet.run.checkpoint import checkpoint_dict, load_checkpoint
from pgnet.run.layout import RunDir
from pgnet.run.state import RunState
from pgnet.run.time_limit import TimeBudget
from pgnet.run.training_run import TrainingRun
from pgnet.runtime import autocast, resolve_device, set_memory_format, to_device

log = logging.getLogger("pgnet.train")


def train(cfg: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
          hooks: list | None = None, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Train and evaluate; returns the last evaluation's metrics plus `step`, `epoch` and
    `train/skipped_images` (unreadable training images, each logged and left out of its batch).
    `clock` measures `train.time_limit` (seconds)."""
    run = TrainingRun(cfg, run_dir, hooks=hooks)
    if resume:  # said before any data is read or generated
        run.dir.check_resumable()
    else:
        run.dir.check_new()
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    train_set, val_set = training_datasets(cfg, progress)
    planned = total_steps(cfg, len(train_set))
    model = set_memory_format(seeded_model(cfg).to(device), cfg.train.channels_last)
    criterion = PGNetLoss(cfg.loss, guidance=cfg.model.guidance)
    optimizer = build_optimizer(cfg.optim, model.named_parameters())
    scheduler = build_scheduler(cfg.optim, optimizer, planned)

    def checkpoint(state: RunState | None = None) -> dict[str, Any]:
        return checkpoint_dict(cfg, state or run.state, model.state_dict(), optimizer.state_dict(),
                               scheduler.state_dict())

    def best_checkpoint() -> dict[str, Any]:  # for inference and export: no optimiser state (a third the size)
        return checkpoint_dict(cfg, run.state, model.state_dict())

    state = _restore(run.dir, cfg, model, optimizer, scheduler, planned) if resume else RunState(total_steps=planned)
    run.begin(state)
    if resume:
        log.info("resumed from step %d (epoch %d)", state.step, state.epoch)
    timer = TimeBudget(cfg.train.time_limit, state.step, state.time_used, clock) if cfg.train.time_limit > 0 else None
    if timer:
        _replan(timer, cfg, optimizer, scheduler, state)
    model.train()
    while run.more_steps():
        epoch, done = state.next_epoch()
        plan = epoch_batches(len(train_set), cfg.train.batch_size, cfg.train.seed, epoch)
        bar = progress_bar(epoch_loader(train_set, cfg, epoch, plan[done:]), enabled=progress,
                           desc=f"epoch {epoch}", unit="step")
        consumed, tick = 0, time.perf_counter()
        for images, targets, _, num_bad in bar:
            waited = time.perf_counter() - tick  # for this batch, since the last step ended
            consumed += 1
            run.count_samples(len(images) + num_bad, num_bad)
            if len(images) == 0:
                continue
            loss, terms, lr = _step(cfg, model, criterion, optimizer, scheduler, images.to(device),
                                    to_device(targets, device), state.step + 1)
            now = time.perf_counter()
            record = run.step_done(epoch, loss, terms, lr, len(images) / max(now - tick, 1e-9), {"data/wait_s": waited})
            tick = now
            if timer:
                _replan(timer, cfg, optimizer, scheduler, state)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}", ends_at_step=state.total_steps)
            if run.finished:  # mid-epoch if need be: max_steps, or the time limit running out
                break
            if run.step_checkpoint_due(done + consumed, len(plan)):
                if timer:
                    state.time_used = timer.used()
                run.save_last(checkpoint(state.cut_at(epoch, done + consumed)))
        end = run.end_epoch(epoch, done + consumed, len(plan))
        if end.evaluate:
            metrics, results = evaluate_model(model, val_set, cfg.eval, device, progress=progress,
                                              precision=cfg.train.precision)
            run.evaluated(metrics, results, best_checkpoint)
        if timer:
            state.time_used = timer.used()  # what a resumed run has left to spend
        if end.checkpoint:
            run.save_last(checkpoint())
    return run.summary()


def _step(cfg: Config, model, criterion, optimizer, scheduler, images: torch.Tensor,
          targets: dict[str, torch.Tensor], step: int) -> tuple[float, dict[str, float], float]:
    """One optimiser step on a batch, in `train.accumulate` micro-batches whose gradients add up to the
    batch's (each weighted by its share of the images); returns (loss, loss terms, the learning rate it used),
    the micro-batches' weighted means."""
    optimizer.zero_grad(set_to_none=True)
    parts = min(cfg.train.accumulate, len(images))
    loss_sum, term_sums = 0.0, {}
    for chunk in zip(images.chunk(parts), *(t.chunk(parts) for t in targets.values())):
        part_images, part_targets = chunk[0], dict(zip(targets, chunk[1:]))
        with autocast(cfg.train.precision, images.device):
            outputs = model(part_images)
        loss, terms = criterion(outputs, part_targets)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss is {loss.item()} at step {step}; lower optim.lr or check the data "
                                "(the last metrics.jsonl record shows the terms)")
        share = len(part_images) / len(images)
        (loss * share).backward()
        loss_sum += loss.item() * share
        for k, v in terms.items():
            term_sums[k] = term_sums.get(k, 0.0) + v.item() * share
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    return loss_sum, term_sums, lr


def _replan(timer: TimeBudget, cfg: Config, optimizer, scheduler, state: RunState) -> None:
    """`state.total_steps` by `train.time_limit` after `state.step` steps, the LR schedule fitted to it."""
    planned = timer.plan(state.step, state.total_steps)
    if planned != state.total_steps:
        fit_schedule(cfg.optim, optimizer, scheduler, state.step, planned)
        state.total_steps = planned
    if state.step >= planned:
        log.info("train.time_limit: %.2f of %g minutes used; the run ends at step %d",
                 timer.used() / 60, cfg.train.time_limit, planned)


def _last_good_checkpoint(run_dir: RunDir) -> tuple[Path, dict[str, Any]]:
    """`checkpoint_last.pt`, or when it is missing or cannot be read (a crash, a full disk), with a warning,
    `checkpoint_previous.pt`: the steps after it are trained again."""
    try:
        return run_dir.last_checkpoint, load_checkpoint(run_dir.last_checkpoint)
    except (CheckpointError, MissingFileError) as err:
        if not run_dir.previous_checkpoint.is_file():
            raise
        log.warning("%s; resuming from %s instead", err, run_dir.previous_checkpoint.name)
        return run_dir.previous_checkpoint, load_checkpoint(run_dir.previous_checkpoint)


def _restore(run_dir: RunDir, cfg: Config, model, optimizer, scheduler, steps: int) -> RunState:
    """Load the run's last checkpoint into model, optimiser and schedule; returns the state to go on from."""
    path, ckpt = _last_good_checkpoint(run_dir)
    saved = config_from_dict(ckpt["config"], str(path))
    if saved.model != cfg.model:
        raise CheckpointError(f"{path} was trained with a different model config ({saved.model}); "
                              "resume with the run's own config.yaml")
    if "optimizer" not in ckpt:
        raise CheckpointError(f"{path} holds the weights of a finished pipeline run, not a resumable state; "
                              "resume it with its pipeline.stages >= 1 (any S): it continues from the stage "
                              f"checkpoints under {run_dir.stage_checkpoints}")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    state = RunState.from_dict(ckpt)
    planned = ckpt.get("total_steps", steps)
    if cfg.train.time_limit > 0:  # the saved plan, which the time left re-fits
        steps = planned
    elif planned != steps:
        log.warning("resuming a run planned for %d steps as one of %d (train.epochs or train.max_steps changed): "
                    "steps %d.. follow the LR schedule of a %d-step run", planned, steps, state.step + 1, steps)
    fit_schedule(cfg.optim, optimizer, scheduler, state.step, steps)
    state.total_steps = steps
    return state
