"""The learning-rate schedules (`optim.schedule`) against hand-computed values, applied to every group."""
from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from pgnet.config import OptimConfig
from pgnet.optim import build_scheduler, lr_factor


@pytest.mark.parametrize("cfg, total, expected", [
    # linear warm-up over 4 steps, then cosine from 1 to 0 over steps 4..12
    (OptimConfig(schedule="cosine", warmup_steps=4), 12,
     {0: 0.25, 1: 0.5, 2: 0.75, 3: 1.0, 4: 1.0, 6: (1 + math.sqrt(0.5)) / 2, 8: 0.5,
      10: (1 - math.sqrt(0.5)) / 2, 12: 0.0, 20: 0.0}),
    (OptimConfig(schedule="cosine", warmup_steps=0), 10,
     {0: 1.0, 5: 0.5, 9: (1 + math.cos(0.9 * math.pi)) / 2}),
    # step: x0.1 at 50% and 75% of 20 steps (10 and 15)
    (OptimConfig(schedule="step", warmup_steps=0, milestones=(0.5, 0.75), gamma=0.1), 20,
     {0: 1.0, 9: 1.0, 10: 0.1, 14: 0.1, 15: 0.01, 19: 0.01}),
    (OptimConfig(schedule="step", warmup_steps=2, milestones=(0.5,), gamma=0.5), 8,
     {0: 0.5, 1: 1.0, 2: 1.0, 3: 1.0, 4: 0.5, 7: 0.5}),
    (OptimConfig(schedule="constant", warmup_steps=3), 10, {0: 1 / 3, 1: 2 / 3, 2: 1.0, 3: 1.0, 9: 1.0}),
    # linear: from 1 at the end of the warm-up (step 2) to 0 at step 10
    (OptimConfig(schedule="linear", warmup_steps=2), 10, {0: 0.5, 1: 1.0, 2: 1.0, 4: 0.75, 6: 0.5, 9: 0.125,
                                                           10: 0.0, 15: 0.0}),
], ids=["cosine-warmup", "cosine", "step", "step-warmup", "constant-warmup", "linear-warmup"])
def test_lr_factor_hand_computed(cfg, total, expected):
    for step, factor in expected.items():
        assert lr_factor(cfg, step, total) == pytest.approx(factor, abs=1e-12), f"step {step}"


@pytest.mark.parametrize("schedule", ["cosine", "linear", "step", "constant"])
def test_scheduler_applies_the_factor_to_every_group(schedule):
    cfg = OptimConfig(lr=0.02, schedule=schedule, warmup_steps=3)
    params = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=cfg.lr)
    scheduler = build_scheduler(cfg, optimizer, total_steps=12)
    seen = []
    for _ in range(12):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    expected = [[0.02 * lr_factor(cfg, s, 12)] * 2 for s in range(12)]
    assert_close(torch.tensor(seen, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64))


