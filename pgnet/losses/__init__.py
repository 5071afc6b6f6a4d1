"""PGNet's losses: IoU-family box losses, CenterNet's heatmap focal loss and the full training criterion.

`PGNetLoss(cfg.loss, guidance=cfg.model.guidance)` is what the trainers use; `loss.box` names an
entry of `pgnet.registry.BOX_LOSSES` (`register_box_loss` adds one).
"""
from pgnet.losses.criterion import PGNetLoss
from pgnet.losses.focal import focal_loss
from pgnet.losses.iou import BoxLoss, box_iou_loss, box_loss_fn, register_box_loss

__all__ = ["BoxLoss", "PGNetLoss", "box_iou_loss", "box_loss_fn", "focal_loss", "register_box_loss"]
