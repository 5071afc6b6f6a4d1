"""IoU-family box regression losses (IoU, GIoU, DIoU, CIoU) and the paper's crossed CDIoU scheme.

`loss.box` names an entry of `pgnet.registry.BOX_LOSSES`: a `BoxLoss`, the per-box loss of the main
head and that of the guidance head (the same one, except for crossed schemes such as CDIoU).
Formulas follow torchvision.ops' box losses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from pgnet.registry import BOX_LOSSES

# A per-box loss: (pred (..., 4), target (..., 4), eps) -> loss (...,), xyxy boxes.
BoxLossFn = Callable[[Tensor, Tensor, float], Tensor]


@dataclass(frozen=True)
class BoxLoss:
    """A `loss.box` variant: the per-box loss of the main (stride-4) head and of the P4 guidance head."""

    main: BoxLossFn
    guide: BoxLossFn

    @property
    def crossed(self) -> bool:
        return self.main is not self.guide


def register_box_loss(name: str) -> Callable[[BoxLossFn], BoxLossFn]:
    """Decorator: `loss.box: name` supervises both heads with this per-box loss (one registry entry)."""
    def add(fn: BoxLossFn) -> BoxLossFn:
        BOX_LOSSES.register(name, BoxLoss(fn, fn))
        return fn
    return add


def box_loss_fn(name: str) -> BoxLossFn:
    """The per-box loss of a single-loss variant (`iou`, `giou`...); a crossed one names two."""
    variant: BoxLoss = BOX_LOSSES.get(name)
    if variant.crossed:
        raise ValueError(f"box loss {name!r} is crossed ({variant.main.__name__} on the main head, "
                         f"{variant.guide.__name__} on the guidance head): name one of its per-box losses")
    return variant.main


def _intersection_union(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection and union areas; the intersection is exactly 0 (no gradient) without overlap."""
    x1, y1, x2, y2 = pred.unbind(-1)
    x1g, y1g, x2g, y2g = target.unbind(-1)
    iw = torch.minimum(x2, x2g) - torch.maximum(x1, x1g)
    ih = torch.minimum(y2, y2g) - torch.maximum(y1, y1g)
    # Exactly 0, with no gradient, unless the boxes truly overlap (torchvision's mask does the same).
    inter = torch.where((iw > 0) & (ih > 0), iw * ih, torch.zeros_like(iw))
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    return inter, union


def _enclosing_wh(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Width and height of the smallest box enclosing both boxes."""
    x1, y1, x2, y2 = pred.unbind(-1)
    x1g, y1g, x2g, y2g = target.unbind(-1)
    return torch.maximum(x2, x2g) - torch.minimum(x1, x1g), torch.maximum(y2, y2g) - torch.minimum(y1, y1g)


def _iou(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    inter, union = _intersection_union(pred, target)
    return inter / (union + eps)


def _centre_distance_penalty(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    """rho^2(centre, centre_gt) / D^2, D the diagonal of the enclosing box (the DIoU term)."""
    cw, ch = _enclosing_wh(pred, target)
    diagonal_sq = cw ** 2 + ch ** 2 + eps
    dx = (pred[..., 0] + pred[..., 2] - target[..., 0] - target[..., 2]) / 2
    dy = (pred[..., 1] + pred[..., 3] - target[..., 1] - target[..., 3]) / 2
    return (dx ** 2 + dy ** 2) / diagonal_sq


def _aspect_angle(w: Tensor, h: Tensor) -> Tensor:
    """atan(w / h), also for h == 0 (pi/2) and for a 0x0 box (0).

    atan2 avoids the 0 * inf = NaN gradient of atan(w / h) at h = 0; torch's atan2
    gradient is 0 at (0, 0) (the edge-case tests hold it to that).
    """
    return torch.atan2(w, h)


@register_box_loss("iou")
def iou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """1 - IoU."""
    return 1 - _iou(pred, target, eps)


@register_box_loss("giou")
def giou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """1 - IoU + |C - (B u Bgt)| / |C| (Rezatofighi et al. 2019; the paper's Eq. 4)."""
    inter, union = _intersection_union(pred, target)
    cw, ch = _enclosing_wh(pred, target)
    area_c = cw * ch
    return 1 - inter / (union + eps) + (area_c - union) / (area_c + eps)


@register_box_loss("diou")
def diou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """1 - IoU + rho^2 / D^2 (Zheng et al. 2020; the paper's Eq. 5, its "distance" form)."""
    return 1 - _iou(pred, target, eps) + _centre_distance_penalty(pred, target, eps)


@register_box_loss("ciou")
def ciou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """DIoU + alpha * v, v the aspect-ratio consistency term, alpha a constant (no gradient)."""
    iou = _iou(pred, target, eps)
    diou = 1 - iou + _centre_distance_penalty(pred, target, eps)
    angle = _aspect_angle(pred[..., 2] - pred[..., 0], pred[..., 3] - pred[..., 1])
    angle_gt = _aspect_angle(target[..., 2] - target[..., 0], target[..., 3] - target[..., 1])
    v = (4 / math.pi ** 2) * (angle_gt - angle) ** 2
    with torch.no_grad():  # as in the CIoU paper and torchvision: alpha is a trade-off weight
        alpha = v / (1 - iou + v + eps)
    return diou + alpha * v


def box_iou_loss(pred: Tensor, target: Tensor, kind: str | BoxLossFn, reduction: str = "mean",
                 eps: float = 1e-7) -> Tensor:
    """IoU-family loss between matching xyxy boxes `pred` and `target` of shape (N, 4).

    `kind`: a registered single-loss variant (iou | giou | diou | ciou) or a per-box loss function.
    `reduction`: none (N,) | mean | sum. The mean
    of no boxes is 0 (with a zero gradient), so an image without people is harmless.
    """
    fn = box_loss_fn(kind) if isinstance(kind, str) else kind
    if pred.shape != target.shape or pred.shape[-1:] != (4,):
        raise ValueError(
            f"box_iou_loss expects matching (N, 4) xyxy boxes, got pred {tuple(pred.shape)} and "
            f"target {tuple(target.shape)}; reshape both to (N, 4)")
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction={reduction!r} is not one of none, mean, sum")
    # Half-precision areas lose too much; compute in at least float32 (as torchvision does).
    if pred.dtype not in (torch.float32, torch.float64):
        pred = pred.float()
    if target.dtype not in (torch.float32, torch.float64):
        target = target.float()
    loss = fn(pred, target, eps)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0


# The paper's Cross-Distance IoU: GIoU supervises the deep head, DIoU the P4 guidance head.
BOX_LOSSES.register("cdiou", BoxLoss(main=giou_loss, guide=diou_loss))
