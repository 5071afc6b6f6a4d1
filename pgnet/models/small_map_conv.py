"""Convolutions on tiny feature maps computed as one matrix product (CPU).

On the CPU, oneDNN's direct convolution runs at about half its matrix-product speed once the output
map has 16 positions or fewer (ResNet's last stage at 128 px input: 4 x 4): forward plus backward of
a 512-channel 3x3 convolution on 4 x 4 maps takes about twice as long as the same arithmetic as
patches x weights. `SmallMapConv2d` is an `nn.Conv2d` (same parameters, same state-dict keys) that
takes the matrix-product path there and leaves every other case (GPUs, larger maps, groups,
dilation) to `nn.Conv2d`. The result is the same convolution up to floating-point rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_POSITIONS = 16  # output maps of at most this many positions take the matrix-product path


def _output_size(h: int, w: int, k: int, stride: int, padding: int) -> tuple[int, int]:
    return (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1


def _tap(i: int, j: int, stride: int, out_h: int, out_w: int) -> tuple[slice, slice, slice]:
    """Index of a padded NHWC map: the input pixels that kernel tap (i, j) meets, one per output position."""
    return (slice(None), slice(i, i + stride * (out_h - 1) + 1, stride), slice(j, j + stride * (out_w - 1) + 1, stride))


def _patches(x_nhwc: Tensor, k: int, stride: int, padding: int, out_h: int, out_w: int) -> Tensor:
    """(N, Ho, Wo, k*k, C): the k x k input patch of every output position, of an NHWC tensor."""
    padded = F.pad(x_nhwc, (0, 0, padding, padding, padding, padding))
    return torch.stack([padded[_tap(i, j, stride, out_h, out_w)] for i in range(k) for j in range(k)], dim=3)


class _PatchMatmul(torch.autograd.Function):
    """Convolution (square kernel, no groups or dilation, no bias) as patches @ weights^T, with the
    backward as two matrix products and a scatter-add of the patch gradients."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
        n, c, h, w = x.shape
        out_c, _, k, _ = weight.shape
        out_h, out_w = _output_size(h, w, k, stride, padding)
        patches = _patches(x.permute(0, 2, 3, 1), k, stride, padding, out_h, out_w).reshape(-1, k * k * c)
        w2 = weight.permute(0, 2, 3, 1).reshape(out_c, k * k * c)  # same (kh, kw, C) order as the patches
        ctx.save_for_backward(patches, w2)
        ctx.geometry = (n, c, h, w, k, out_h, out_w, stride, padding)
        y = patches @ w2.t()  # (N * Ho * Wo, out_c)
        return y.reshape(n, out_h, out_w, out_c).permute(0, 3, 1, 2)  # NCHW shape, channels-last memory

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        patches, w2 = ctx.saved_tensors
        n, c, h, w, k, out_h, out_w, stride, padding = ctx.geometry
        g = grad_y.permute(0, 2, 3, 1).reshape(-1, w2.shape[0])
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (g.t() @ patches).reshape(-1, k, k, c).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[0]:
            grad_patches = (g @ w2).reshape(n, out_h, out_w, k, k, c)
            grad_padded = grad_patches.new_zeros(n, h + 2 * padding, w + 2 * padding, c)
            for i in range(k):
                for j in range(k):
                    grad_padded[_tap(i, j, stride, out_h, out_w)] += grad_patches[:, :, :, i, j]
            grad_x = grad_padded[:, padding:padding + h, padding:padding + w].permute(0, 3, 1, 2)
        return grad_x, grad_w, None, None


class SmallMapConv2d(nn.Conv2d):
    """`nn.Conv2d` that computes outputs of at most MAX_POSITIONS positions on the CPU as a matrix product."""

    def _takes_matmul_path(self, x: Tensor) -> bool:
        if x.device.type != "cpu" or x.dim() != 4 or self.groups != 1 or self.padding_mode != "zeros":
            return False
        (k, k2), (s, s2), (d, d2) = self.kernel_size, self.stride, self.dilation
        if k != k2 or s != s2 or (d, d2) != (1, 1) or not isinstance(self.padding, tuple) \
                or self.padding[0] != self.padding[1]:
            return False
        out_h, out_w = _output_size(x.shape[2], x.shape[3], k, s, self.padding[0])
        return out_h * out_w <= MAX_POSITIONS

    def forward(self, x: Tensor) -> Tensor:
        if not self._takes_matmul_path(x):
            return super().forward(x)
        # Autocast does not reach inside an autograd Function: cast as it would cast a convolution.
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        with torch.autocast("cpu", enabled=False):
            y = _PatchMatmul.apply(x.to(dtype), self.weight.to(dtype), self.stride[0], self.padding[0])
            return y if self.bias is None else y + self.bias.to(dtype).view(1, -1, 1, 1)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "SmallMapConv2d":
        """The same convolution, holding `conv`'s own parameters (not copies)."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, device="meta")
        new.weight, new.bias = conv.weight, conv.bias
        return new


def convert_small_map_convs(module: nn.Module) -> nn.Module:
    """`module` with every plain `nn.Conv2d` inside it replaced by a SmallMapConv2d on the same parameters."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            setattr(module, name, SmallMapConv2d.from_conv(child))
        else:
            convert_small_map_convs(child)
    return module
