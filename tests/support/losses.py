"""What the loss tests share, written independently of the library: the box-loss variants' expected kinds,
a plain focal loss and a Gaussian drawer."""
from __future__ import annotations

import torch

# Written out here, independently of the library: the paper's crossed scheme is GIoU on the
# main head and the distance form (DIoU) on the guidance head.
EXPECTED_KINDS = {"iou": ("iou", "iou"), "giou": ("giou", "giou"), "diou": ("diou", "diou"),
                  "ciou": ("ciou", "ciou"), "cdiou": ("giou", "diou")}
BOX_LOSS_VARIANTS = tuple(EXPECTED_KINDS)


def reference_focal(logits, target, weight, alpha, beta):
    """CenterNet's focal loss written plainly, one image at a time, in float64."""
    losses = []
    for x, y, w in zip(logits.double(), target.double(), weight.double()):
        w = w.expand_as(y)
        p = torch.sigmoid(x)
        pos = y.eq(1)
        pos_term = ((1 - p) ** alpha * torch.log(p) * w)[pos].sum()
        neg_term = ((1 - y) ** beta * p ** alpha * torch.log(1 - p) * w)[~pos].sum()
        num_pos = (pos.double() * w).sum()
        losses.append(-(pos_term + neg_term) / max(1.0, num_pos.item()))
    return torch.stack(losses).mean()


def draw_gaussian(heatmap: torch.Tensor, cx: int, cy: int, sigma: float) -> None:
    """Write a Gaussian of peak exactly 1 at integer (cx, cy), keeping the maximum with what is there."""
    h, w = heatmap.shape
    xs, ys = torch.arange(w).view(1, -1).float(), torch.arange(h).view(-1, 1).float()
    torch.maximum(heatmap, torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2)), out=heatmap)
