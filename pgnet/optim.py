"""Optimiser and learning-rate schedule from an `OptimConfig`, each one registry (`optim.name`, `optim.schedule`).

The schedule is a function of the step alone (linear warm-up, then cosine, linear decay to zero,
step or constant), so a resumed or pipelined run follows the same curve.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from pgnet.config import OptimConfig
from pgnet.registry import LR_SCHEDULES, OPTIMIZERS


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """No weight decay on norm parameters and biases (1-D tensors), as usual for detectors."""
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


# `optim.name`: `fn(param_groups, cfg) -> Optimizer`. Fused: one kernel over all parameters (CPU and
# CUDA), several times faster than the per-parameter loop for AdamW.
@OPTIMIZERS.register("adamw")
def _adamw(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)


@OPTIMIZERS.register("sgd")
def _sgd(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, fused=True)


def build_optimizer(cfg: OptimConfig, named_params: Iterable[tuple[str, nn.Parameter]]) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.name)(param_groups(named_params, cfg.weight_decay), cfg)


# `optim.schedule`: `fn(cfg, step, total_steps) -> factor` after the warm-up (`step` >= warmup_steps).
@LR_SCHEDULES.register("cosine")
def _cosine(cfg: OptimConfig, step: int, total_steps: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * _progress(cfg, step, total_steps)))


@LR_SCHEDULES.register("linear")
def _linear(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """A straight line to zero at the run's last step."""
    return 1.0 - _progress(cfg, step, total_steps)


@LR_SCHEDULES.register("step")
def _step(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """`gamma` at each of `milestones` (fractions of the run)."""
    return cfg.gamma ** sum(step >= m * total_steps for m in cfg.milestones)


@LR_SCHEDULES.register("constant")
def _constant(cfg: OptimConfig, step: int, total_steps: int) -> float:
    return 1.0


def _progress(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """How far the run is past its warm-up, from 0 to 1."""
    return min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))


def lr_factor(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """Multiplier of `cfg.lr` at `step` (0-based) of a run of `total_steps`: linear warm-up, then the schedule."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    return LR_SCHEDULES.get(cfg.schedule)(cfg, step, total_steps)


def build_scheduler(cfg: OptimConfig, optimizer: torch.optim.Optimizer,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step, total_steps))


def fit_schedule(cfg: OptimConfig, optimizer: torch.optim.Optimizer, scheduler, step: int, total_steps: int) -> None:
    """Re-plan a running schedule as one of `total_steps` (a resumed run, `train.time_limit`): the steps
    after `step` follow it, the ones done keep the rates they had."""
    scheduler.lr_lambdas = [lambda s: lr_factor(cfg, s, total_steps) for _ in optimizer.param_groups]
    align_lr(cfg, optimizer, scheduler, step, total_steps)


def align_lr(cfg: OptimConfig, optimizer: torch.optim.Optimizer, scheduler, step: int, total_steps: int) -> None:
    """After loading a checkpoint: the saved rates follow the saved run's schedule; the next step
    (`step` done so far) must use this run's schedule of `total_steps`, which may be longer or shorter."""
    for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * lr_factor(cfg, step, total_steps)
