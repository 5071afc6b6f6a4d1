"""CenterNet's penalty-reduced pixel-wise focal loss on heatmap logits (Law & Deng 2018, Zhou et al. 2019).

Computed per image (normalised by that image's positives) and averaged over the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# A pixel is a positive (an object centre or key point) where the target heatmap
# reaches its peak value 1. A threshold, not `eq(1)`: a peak computed in float
# may land a rounding error below 1, and a missed peak would silently turn the
# positive into a hard negative. A Gaussian reaches 1 - 1e-4 only within
# ~0.014 sigma of its centre, so no neighbour of a peak is counted.
POSITIVE_THRESHOLD = 1 - 1e-4


def batch_mean(per_image: Tensor) -> Tensor:
    """Mean over images of a (B,) per-image loss; 0 (with a working gradient) for B = 0."""
    return per_image.mean() if per_image.numel() > 0 else per_image.sum() * 0.0


def focal_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None,
               alpha: float = 2.0, beta: float = 4.0, reduction: str = "mean") -> Tensor:
    """Penalty-reduced focal loss between heatmap logits and Gaussian targets, both (B, C, H, W).

    Per image: -sum(w * [pos: (1-p)^alpha log p, neg: (1-y)^beta p^alpha log(1-p)]) / max(1, num_pos),
    with p = sigmoid(logits), y = target, w = `weight` broadcast to the logits ((B, 1, H, W): 1
    counts, 0 ignores a pixel, e.g. a crowd region). `num_pos` is the weighted count of positives
    (target >= POSITIVE_THRESHOLD). `reduction`: mean over images | none, the (B,) per-image losses.
    """
    if logits.shape != target.shape or logits.dim() != 4:
        raise ValueError(
            f"focal_loss expects (B, C, H, W) logits and a target of the same shape, got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}; check the heatmap size against the model's stride")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r} is not one of mean, none")
    if weight is None:
        weight = torch.ones_like(target)
    else:
        try:
            weight = weight.to(target.dtype).expand_as(target)
        except RuntimeError:
            raise ValueError(
                f"focal_loss weight of shape {tuple(weight.shape)} does not broadcast to the heatmap "
                f"{tuple(target.shape)}; pass (B, 1, H, W) or (B, C, H, W)") from None
    # logsigmoid(x) = log p and logsigmoid(-x) = log(1 - p), finite for any logit:
    # no clamping of p as in CenterNet's `_sigmoid`, no log(0).
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    not_p = torch.sigmoid(-logits)
    positive = (target >= POSITIVE_THRESHOLD).to(logits.dtype)
    pos_loss = not_p.pow(alpha) * log_p * positive
    neg_loss = (1 - target).clamp(min=0).pow(beta) * p.pow(alpha) * log_not_p * (1 - positive)
    per_pixel = -(pos_loss + neg_loss) * weight
    num_pos = (positive * weight).flatten(1).sum(1)
    per_image = per_pixel.flatten(1).sum(1) / num_pos.clamp(min=1)
    return per_image if reduction == "none" else batch_mean(per_image)
