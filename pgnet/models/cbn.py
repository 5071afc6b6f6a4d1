"""Cross-Iteration Batch Normalization (Yao et al., 2020, "Cross-Iteration Batch Normalization").

BN whose statistics average the current and the k previous iterations, the old
ones compensated to the current conv weights by a first-order Taylor step.

Following the official code (github.com/Howal/Cross-iterationBatchNorm): for each
channel c the layer keeps, per past iteration t-tau, the batch mean mu, the mean
of squares nu, their derivatives w.r.t. the producing conv's weight slice W_c and
that weight. At iteration t

    mu_{t-tau}(W_t) ~= mu_{t-tau} + sum(dmu_{t-tau}/dW_c * (W_{t,c} - W_{t-tau,c}))

(same for nu); a past entry whose compensated variance nu - mu^2 is negative is
dropped; mu_bar, nu_bar average the current and kept entries and
sigma^2 = nu_bar - mu_bar^2. Only the current statistics carry gradients. The
first `burnin` training iterations use plain BN (the window is 0). The running
statistics are updated from the current batch alone (mean, unbiased variance),
exactly as BN and the official code do; evaluation uses them.

The derivatives come from `torch.autograd.grad` of the statistics w.r.t. the
bound conv's weight (as in the official code), so a CBN needs the conv that
produces its input: `bind_cbn_convs(model)` pairs them. The layer is device
agnostic; only the CPU path is exercised on the project's machines (the CUDA
test is skipped without a GPU).
"""
from __future__ import annotations

from collections import deque
from typing import NamedTuple

import torch
from torch import Tensor, nn

from pgnet.models.sync_bn import (
    full_precision,
    normalize_with_stats,
    update_running_stats,
)

CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)


class PastStats(NamedTuple):
    """One past iteration, detached. Derivatives and weight are per output channel (see `per_channel`)."""

    mean: Tensor  # (C,)
    mean_sq: Tensor  # (C,)
    dmean_dw: Tensor  # (C, ...) or (1, ...) when every channel sees the same patches (groups == 1)
    dmean_sq_dw: Tensor  # (C, ...)
    weight: Tensor  # (C, ...)


def per_channel(weight: Tensor, conv: nn.Module) -> Tensor:
    """The conv weight (or a tensor shaped like it) as (out_channels, ...): row c is all output c depends on."""
    if isinstance(conv, nn.ConvTranspose2d):
        # ConvTranspose2d stores (in, out / groups, kh, kw): regroup so output channels lead.
        groups = conv.groups
        cin, cout_g = weight.shape[:2]
        grouped = weight.reshape(groups, cin // groups, cout_g, *weight.shape[2:]).transpose(1, 2)
        return grouped.reshape(groups * cout_g, cin // groups, *weight.shape[2:])
    return weight


def combine_stats(mean: Tensor, mean_sq: Tensor, past_mean: Tensor, past_mean_sq: Tensor
                  ) -> tuple[Tensor, Tensor]:
    """Average current (C,) and past (P, C) statistics, dropping past entries whose variance is negative.

    Returns (mu_bar, sigma^2). The current entry always counts.
    """
    keep = (past_mean_sq - past_mean.pow(2) >= 0).to(mean.dtype)
    count = 1 + keep.sum(0)
    mix_mean = (mean + (past_mean * keep).sum(0)) / count
    mix_mean_sq = (mean_sq + (past_mean_sq * keep).sum(0)) / count
    return mix_mean, (mix_mean_sq - mix_mean.pow(2)).clamp_min(0)


class CrossIterationBatchNorm2d(nn.BatchNorm2d):
    """BN over the current and `window` past iterations, Taylor-compensated to the current conv weights.

    Call `bind_cbn_convs(model)` once after building the model. The past
    statistics live in `history` (newest first); they are not part of the
    state dict, so a resumed run refills its window in `window` iterations.
    The burn-in counts `num_batches_tracked`, i.e. training forwards (each
    micro-batch of a pipeline counts).
    """

    def __init__(self, num_features: int, window: int = 4, burnin: int = 50, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, device=None, dtype=None):
        if window < 0 or burnin < 0:
            raise ValueError(f"CBN window={window} and burnin={burnin} must be >= 0")
        # Running statistics are always tracked: eval uses them and the burn-in counts num_batches_tracked.
        super().__init__(num_features, eps, momentum, affine, True, device, dtype)
        self.window = window
        self.burnin = burnin
        self.history: deque[PastStats] = deque(maxlen=window)
        # A plain attribute, not a submodule: the conv's parameters must not appear twice in the state dict.
        object.__setattr__(self, "_conv", None)

    @property
    def conv(self) -> nn.Module | None:
        """The conv whose output this layer normalises (set by `bind`)."""
        return self.__dict__["_conv"]

    def bind(self, conv: nn.Module) -> None:
        """Use `conv`'s weight for the cross-iteration compensation; clears the history."""
        if not isinstance(conv, CONV_TYPES):
            raise TypeError(f"CBN can only be bound to nn.Conv2d or nn.ConvTranspose2d, got {type(conv).__name__}")
        if conv.out_channels != self.num_features:
            raise ValueError(f"the conv has {conv.out_channels} output channels but the CBN normalises "
                             f"{self.num_features}; the CBN must follow the conv that produces its input")
        object.__setattr__(self, "_conv", conv)
        self.history.clear()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}, burnin={self.burnin}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.window == 0:
            return super().forward(x)
        conv = self.conv
        if conv is None:
            raise RuntimeError(
                "CrossIterationBatchNorm2d is training without a bound conv: call "
                "pgnet.models.norms.bind_cbn_convs(model) after building the model (and after replacing layers)")
        weight = conv.weight
        has_graph = torch.is_grad_enabled() and x.requires_grad and weight.requires_grad
        if int(self.num_batches_tracked) < self.burnin or not has_graph:
            # Burn-in, or no graph to the weight (frozen conv, no_grad): plain BN, as the official code.
            return super().forward(x)
        return self._cross_iteration_forward(x, conv)

    def _cross_iteration_forward(self, x: Tensor, conv: nn.Module) -> Tensor:
        self._check_input_dim(x)
        count = x.numel() // x.shape[1]
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
        var, mean = torch.var_mean(full_precision(x), dim=(0, 2, 3), unbiased=False)
        mean_sq = var + mean.pow(2)
        dmean, dmean_sq = self._stat_derivatives(mean, mean_sq, conv)
        weight_now = per_channel(conv.weight.detach(), conv)
        past_mean, past_mean_sq = self.compensated_past_stats(conv.weight.detach())
        mix_mean, mix_var = combine_stats(mean, mean_sq, past_mean, past_mean_sq)
        update_running_stats(self, mean.detach(), var.detach() * (count / (count - 1)))
        self.history.appendleft(PastStats(mean.detach(), mean_sq.detach(), dmean, dmean_sq,
                                          weight_now.clone()))
        return normalize_with_stats(self, x, mix_mean, mix_var)

    def _stat_derivatives(self, mean: Tensor, mean_sq: Tensor, conv: nn.Module) -> tuple[Tensor, Tensor]:
        """d mean_c / d W_c and d mean_sq_c / d W_c, per output channel, detached.

        Channel c's statistic depends only on W_c, so the gradient of sum_c stat_c
        w.r.t. W holds every channel's derivative in its own slice.
        """
        ones = torch.ones_like(mean)
        dmean, = torch.autograd.grad(mean, conv.weight, ones, retain_graph=True, allow_unused=True)
        if dmean is None:
            raise RuntimeError(
                "the conv bound to this CBN does not produce its input; bind_cbn_convs pairs each CBN "
                "with the conv registered just before it, so register the producing conv right before the norm")
        dmean_sq, = torch.autograd.grad(mean_sq, conv.weight, ones, retain_graph=True)
        dmean = per_channel(dmean, conv)
        if conv.groups == 1:
            dmean = dmean[:1]  # every output channel sees the same input patches: keep one row
        return dmean.detach().clone(), per_channel(dmean_sq, conv).detach().clone()

    def compensated_past_stats(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """The stored (mean, mean_sq) moved to `weight` (the conv weight, in its own layout): two (P, C) tensors."""
        conv = self.conv
        if conv is None:
            raise RuntimeError("this CBN has no bound conv: call pgnet.models.norms.bind_cbn_convs(model)")
        weight = per_channel(weight.detach(), conv)
        c = self.num_features
        means, means_sq = [weight.new_zeros(0, c)], [weight.new_zeros(0, c)]
        for past in self.history:
            past = PastStats(*(t.to(weight) for t in past))  # the model may have moved device or dtype
            step = (weight - past.weight).flatten(1)
            means.append((past.mean + (past.dmean_dw.flatten(1) * step).sum(1))[None])
            means_sq.append((past.mean_sq + (past.dmean_sq_dw.flatten(1) * step).sum(1))[None])
        return torch.cat(means), torch.cat(means_sq)


def bind_cbn_convs(model: nn.Module) -> int:
    """Pair every CBN in `model` with the conv registered just before it; returns how many were bound.

    Registration order is `model.named_modules()` order: in torchvision's ResNet
    conv1->bn1, block.convN->bnN, downsample.0->downsample.1. The conv is kept as
    a plain reference, so `copy.deepcopy(model)` binds each copy to its own conv.
    """
    last_conv, last_name = None, ""
    bound = 0
    for name, module in model.named_modules():
        if isinstance(module, CONV_TYPES):
            last_conv, last_name = module, name
        elif isinstance(module, CrossIterationBatchNorm2d):
            if last_conv is None:
                raise ValueError(
                    f"CBN '{name}' has no conv registered before it; CBN compensates the statistics of a "
                    "conv's output, so register that conv just before the norm or choose another norm")
            try:
                module.bind(last_conv)
            except ValueError as exc:
                raise ValueError(f"CBN '{name}' after conv '{last_name}': {exc}") from None
            bound += 1
    return bound
