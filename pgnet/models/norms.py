"""The norm-layer factory: `norm_layer(name)` gives a `channels -> nn.Module` constructor.

Every model takes it (like torchvision's `norm_layer=`), so the YAML's
`model.norm` picks BN, GN, SyncBN, Cross-Iteration BN or frozen BN in one place.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from pgnet.errors import ConfigError
from pgnet.models.cbn import CrossIterationBatchNorm2d, bind_cbn_convs
from pgnet.models.sync_bn import SyncBatchNorm2d, set_sync_bn_group
from pgnet.registry import NORMS

__all__ = ["NormOptions", "norm_layer", "group_count", "bind_cbn_convs",
           "set_sync_bn_group", "CrossIterationBatchNorm2d", "SyncBatchNorm2d"]


@dataclass(frozen=True)
class NormOptions:
    """The knobs some norms take (`model.gn_groups`, `model.cbn_window`, `model.cbn_burnin`)."""

    gn_groups: int = 32
    cbn_window: int = 4  # k past iterations
    cbn_burnin: int = 50  # training iterations of plain BN before the window opens

    def __post_init__(self) -> None:
        if self.gn_groups < 1:
            raise ConfigError(f"gn_groups={self.gn_groups} must be >= 1 (model.gn_groups)")
        if self.cbn_window < 0 or self.cbn_burnin < 0:
            raise ConfigError(f"cbn_window={self.cbn_window} and cbn_burnin={self.cbn_burnin} must be >= 0 "
                             "(model.cbn_window, model.cbn_burnin)")


def group_count(channels: int, max_groups: int) -> int:
    """`max_groups` if it divides `channels`, else the largest divisor of `channels` below it."""
    if channels < 1:
        raise ValueError(f"a norm layer needs at least one channel, got {channels}")
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


# `model.norm`: `fn(channels, options) -> nn.Module`.
@NORMS.register("bn")
def _batch_norm(channels: int, options: NormOptions) -> nn.Module:
    return nn.BatchNorm2d(channels)


@NORMS.register("gn")
def _group_norm(channels: int, options: NormOptions) -> nn.Module:
    return nn.GroupNorm(group_count(channels, options.gn_groups), channels)


@NORMS.register("syncbn")
def _sync_batch_norm(channels: int, options: NormOptions) -> nn.Module:
    return SyncBatchNorm2d(channels)


@NORMS.register("cbn")
def _cross_iteration_batch_norm(channels: int, options: NormOptions) -> nn.Module:
    return CrossIterationBatchNorm2d(channels, window=options.cbn_window, burnin=options.cbn_burnin)


@NORMS.register("frozenbn")
def _frozen_batch_norm(channels: int, options: NormOptions) -> nn.Module:
    return FrozenBatchNorm2d(channels)


def norm_layer(name: str, *, gn_groups: int = 32, cbn_window: int = 4,
               cbn_burnin: int = 50) -> Callable[[int], nn.Module]:
    """A constructor `channels -> norm module`, e.g. `resnet50(weights=None, norm_layer=norm_layer("gn"))`.

    With "cbn", call `bind_cbn_convs(model)` once the model is built.
    """
    make = NORMS.get(name)
    options = NormOptions(gn_groups=gn_groups, cbn_window=cbn_window, cbn_burnin=cbn_burnin)
    return functools.partial(make, options=options)
