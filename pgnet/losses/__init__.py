"""PGNet's losses: IoU-family box losses, CenterNet's heatmap focal loss and the full training criterion.

`PGNetLoss(cfg.loss, guidance=cfg.model.guidance)` is what the trainers use.
"""
from pgnet.losses.criterion import PGNetLoss
from pgnet.losses.focal import focal_loss
from pgnet.losses.iou import (BOX_LOSS_KINDS, BOX_LOSS_VARIANTS, box_iou_loss, box_loss_kinds, get_box_loss,
                              register_box_loss)

__all__ = [
    "BOX_LOSS_KINDS", "BOX_LOSS_VARIANTS", "PGNetLoss", "box_iou_loss", "box_loss_kinds", "focal_loss",
    "get_box_loss", "register_box_loss",
]
