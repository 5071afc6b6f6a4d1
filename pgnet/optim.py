"""Optimiser and learning-rate schedule from an `OptimConfig`.

The schedule is a function of the step alone (linear warm-up, then cosine,
linear decay to zero, step or constant), so a resumed or pipelined run follows the same curve.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from pgnet.config import OptimConfig


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """No weight decay on norm parameters and biases (1-D tensors), as usual for detectors."""
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: OptimConfig, named_params: Iterable[tuple[str, nn.Parameter]]) -> torch.optim.Optimizer:
    groups = param_groups(named_params, cfg.weight_decay)
    # fused: one kernel over all parameters (CPU and CUDA); AdamW's step on cpu_small's ResNet-18 takes
    # 9 ms instead of 42 ms, an eighth of a bfloat16 training step.
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, fused=True)
    raise ValueError(f"optim.name={cfg.name!r}: use adamw or sgd")


def lr_factor(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """Multiplier of `cfg.lr` at `step` (0-based) of a run of `total_steps`."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** sum(step >= m * total_steps for m in cfg.milestones)
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


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
