"""The two necks' costs, printed by `pgnet bench model`: parameters and FLOPs, of the neck and of the whole
network, per backbone, at the network's default widths (`ModelConfig`).

FLOPs are torch's own count (`torch.utils.flop_counter`: 2 per multiply-add of every convolution and
matrix product) of one image's forward, so they do not depend on this machine.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from pgnet.config import ModelConfig
from pgnet.models import build_model
from pgnet.registry import NECKS


@dataclass
class NeckCost:
    backbone: str
    neck: str
    size: tuple[int, int]
    neck_params: int
    model_params: int
    neck_flops: int  # one image's forward
    model_flops: int


def count_flops(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def neck_cost(backbone: str, neck: str, size: tuple[int, int]) -> NeckCost:
    model = build_model(ModelConfig(backbone=backbone, neck=neck)).eval()
    image = torch.zeros(1, 3, *size)
    with torch.no_grad():
        levels = model.backbone(image)
        return NeckCost(backbone, neck, size,
                        neck_params=sum(p.numel() for p in model.neck.parameters()),
                        model_params=sum(p.numel() for p in model.parameters()),
                        neck_flops=count_flops(model.neck, *levels), model_flops=count_flops(model, image))


def neck_costs(backbones: list[str], size: tuple[int, int], print_fn=print) -> dict[str, float]:
    """Print one row per (backbone, neck); return {"params/<backbone>-<neck>": ..., "gflops/...": ...}."""
    print_fn(f"necks at {size[0]}x{size[1]}, one image ({ModelConfig.neck_channels} channels, torch's FLOP count)")
    print_fn(f"{'backbone':<10} {'neck':<5} {'neck params':>12} {'neck GFLOPs':>12} {'model params':>13} "
             f"{'model GFLOPs':>13}")
    results: dict[str, float] = {}
    for backbone in backbones:
        for neck in NECKS.names():
            cost = neck_cost(backbone, neck, size)
            print_fn(f"{backbone:<10} {neck:<5} {cost.neck_params / 1e6:>11.3f}M {cost.neck_flops / 1e9:>12.3f} "
                     f"{cost.model_params / 1e6:>12.2f}M {cost.model_flops / 1e9:>13.2f}")
            key = f"{backbone}-{neck}"
            results.update({f"neck_params/{key}": cost.neck_params, f"neck_gflops/{key}": cost.neck_flops / 1e9,
                            f"model_params/{key}": cost.model_params, f"model_gflops/{key}": cost.model_flops / 1e9})
    return results
