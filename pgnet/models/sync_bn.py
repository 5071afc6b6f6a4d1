"""Synchronised BatchNorm across data-parallel replicas, on CUDA (torch's kernels) and on CPU/gloo.

`nn.SyncBatchNorm` refuses CPU tensors once a process group exists; this
subclass keeps torch's path for CUDA and adds detectron2's NaiveSyncBatchNorm
idea for everything else: one differentiable all-reduce of the per-channel
sum, sum of squares and count.

Which path runs:
- CUDA input: `nn.SyncBatchNorm.forward` (torch's SyncBN with a group of >1
  ranks, plain BN otherwise). Not exercised on the project's CPU machines.
- other devices, training, an initialised group of >1 ranks: the all-reduce
  path below; unequal batch sizes per rank are fine (counts are all-reduced).
- otherwise (no process group, a group of one, eval mode): plain BN.

The running statistics take the global mean and the global unbiased variance,
as `nn.SyncBatchNorm` does, so every rank keeps identical buffers.
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class SyncBatchNorm2d(nn.SyncBatchNorm):
    """BatchNorm2d whose training statistics cover the whole `process_group` (default: the world)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"SyncBatchNorm2d expects (N, C, H, W) input, got {input.dim()}D")

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda:
            return super().forward(x)
        if not self.training or self.group_size() <= 1:
            return _BatchNorm.forward(self, x)  # plain nn.BatchNorm2d behaviour
        return self._all_reduce_forward(x)

    def group_size(self) -> int:
        """Ranks sharing statistics: 1 without an initialised process group."""
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group or dist.group.WORLD)

    def _all_reduce_forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        channels = x.shape[1]
        xf = full_precision(x)
        local = torch.cat([xf.sum(dim=(0, 2, 3)), xf.pow(2).sum(dim=(0, 2, 3)),
                           xf.new_full((1,), x.numel() // channels)])
        with warnings.catch_warnings():
            # Deprecated in favour of the private torch.distributed._functional_collectives; this
            # public one has the backward we need (an all-reduce of the gradient: each rank gets
            # the gradient of the whole group's loss through the shared statistics).
            warnings.simplefilter("ignore", FutureWarning)
            total = dist_nn.all_reduce(local, group=self.process_group or dist.group.WORLD)
        count = total[-1]
        if float(count) <= 1:
            raise ValueError(f"Expected more than 1 value per channel across the process group when "
                             f"training, got {int(count)} (local input size {tuple(x.shape)})")
        mean = total[:channels] / count
        var = (total[channels:2 * channels] / count - mean.pow(2)).clamp_min(0)
        if self.track_running_stats:
            update_running_stats(self, mean.detach(), var.detach() * (count / (count - 1)))
        return normalize_with_stats(self, x, mean, var)


def update_running_stats(bn: _BatchNorm, mean: Tensor, unbiased_var: Tensor) -> None:
    """nn.BatchNorm2d's running-statistics step (a cumulative average when momentum is None)."""
    bn.num_batches_tracked.add_(1)
    factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    # Through `.data`, as BN's kernel updates them: untracked by autograd. An earlier forward's BN (a pipeline
    # runs several micro-batches before their backwards) saved these buffers, and a tracked in-place update
    # would make its backward fail ("modified by an inplace operation").
    bn.running_mean.data.lerp_(mean.detach().to(bn.running_mean), factor)
    bn.running_var.data.lerp_(unbiased_var.detach().to(bn.running_var), factor)


def full_precision(x: Tensor) -> Tensor:
    """`x` in at least float32, for statistics that would lose too much in half precision."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def normalize_with_stats(bn: _BatchNorm, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """BN's output (in x's dtype) for given per-channel (C,) statistics, differentiable through them."""
    scale = torch.rsqrt(var + bn.eps)
    shift = -mean * scale
    if bn.affine:
        scale = scale * bn.weight
        shift = shift * bn.weight + bn.bias
    return (x * scale[None, :, None, None] + shift[None, :, None, None]).to(x.dtype)


def set_sync_bn_group(model: nn.Module, group: dist.ProcessGroup | None) -> int:
    """Make every SyncBN in `model` share statistics over `group` (None: the world); returns how many."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.SyncBatchNorm):
            module.process_group = group
            changed += 1
    return changed
