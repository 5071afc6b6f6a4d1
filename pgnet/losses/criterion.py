"""PGNet's training criterion: heatmap focal losses, L1 offsets and IoU-family box losses on both heads.

Every term is the mean over images of a per-image loss, so a batch's loss is the mean of its micro-batches'.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pgnet.codec.targets import TARGET_KEYS
from pgnet.config import LossConfig
from pgnet.losses.focal import batch_mean, focal_loss
from pgnet.losses.iou import BoxLoss, BoxLossFn, box_iou_loss
from pgnet.registry import BOX_LOSSES

MAIN_OUTPUTS = ("hm", "wh", "reg", "kps", "hm_hp", "hp_offset")
GUIDE_OUTPUTS = ("guide_hm", "guide_wh", "guide_reg")


def gather_at(feat: Tensor, ind: Tensor) -> Tensor:
    """(B, C, H, W) map read at flat locations `ind` (B, K) = y * W + x -> (B, K, C).

    CenterNet's `_transpose_and_gather_feat`.
    """
    b, c, h, w = feat.shape
    flat = feat.permute(0, 2, 3, 1).reshape(b, h * w, c)
    return flat.gather(1, ind.long().unsqueeze(-1).expand(-1, -1, c))


def decode_boxes(wh: Tensor, reg: Tensor, ind: Tensor, width: int) -> Tensor:
    """xyxy boxes (B, K, 4) in output pixels from sizes and centre offsets (B, K, 2) at `ind`."""
    cx = (ind % width).to(wh.dtype) + reg[..., 0]
    cy = torch.div(ind, width, rounding_mode="floor").to(wh.dtype) + reg[..., 1]
    half_w, half_h = wh[..., 0] / 2, wh[..., 1] / 2
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Per-image (B,) mean absolute error over the masked coordinates (0 where none is)."""
    mask = mask.to(pred.dtype).expand_as(pred)
    per_image = ((pred - target).abs() * mask).flatten(1).sum(1)
    return per_image / mask.flatten(1).sum(1).clamp(min=1)


def per_image_box_loss(boxes: Tensor, target: Tensor, mask: Tensor, kind: str | BoxLossFn) -> Tensor:
    """Per-image (B,) mean box loss over the real person slots (mask > 0); 0 for an image without people.

    Only real slots reach the box loss: a padded slot's zero box must not add to the gradient.
    """
    b, k = mask.shape
    real = mask > 0
    image_of_slot = torch.arange(b, device=mask.device).unsqueeze(1).expand(b, k)[real]
    weights = mask[real].to(boxes.dtype)
    losses = box_iou_loss(boxes[real], target[real].to(boxes.dtype), kind, reduction="none")
    sums = boxes.new_zeros(b).index_add(0, image_of_slot, losses * weights)
    counts = boxes.new_zeros(b).index_add(0, image_of_slot, weights)
    return sums / counts.clamp(min=1)


class PGNetLoss(nn.Module):
    """The weighted sum of PGNet's loss terms, from `LossConfig` (see DEVELOPERS.md, Contracts).

    `forward(outputs, targets)` returns `(total, terms)`: `terms` holds each unweighted term
    (hm, box, reg, kps, hm_hp, hp_offset, and with guidance guide_hm, guide_box), detached for
    logging. The guidance terms are weighted by `guidance_weight` times the main term's weight.
    """

    def __init__(self, cfg: LossConfig, guidance: bool = True):
        super().__init__()
        self.cfg = cfg
        self.guidance = guidance
        variant: BoxLoss = BOX_LOSSES.get(cfg.box)
        self.main_kind, self.guide_kind = variant.main, variant.guide
        self.weights = {
            "hm": cfg.hm_weight, "box": cfg.box_weight, "reg": cfg.reg_weight, "kps": cfg.kps_weight,
            "hm_hp": cfg.hm_hp_weight, "hp_offset": cfg.hp_offset_weight,
        }
        if guidance:
            self.weights["guide_hm"] = cfg.guidance_weight * cfg.hm_weight
            self.weights["guide_box"] = cfg.guidance_weight * cfg.box_weight

    def _focal(self, logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        return focal_loss(logits, target, weight, self.cfg.focal_alpha, self.cfg.focal_beta)

    def _box(self, wh: Tensor, reg: Tensor, targets: dict[str, Tensor], kind: str) -> Tensor:
        ind = targets["ind"]
        boxes = decode_boxes(gather_at(wh, ind), gather_at(reg, ind), ind, wh.shape[-1])
        return batch_mean(per_image_box_loss(boxes, targets["box"], targets["mask"], kind))

    def terms(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each unweighted loss term, still attached to the graph."""
        self._check(outputs, targets)
        weight = targets["hm_weight"]
        ind, mask = targets["ind"], targets["mask"]
        out = {
            "hm": self._focal(outputs["hm"], targets["hm"], weight),
            "box": self._box(outputs["wh"], outputs["reg"], targets, self.main_kind),
            "reg": batch_mean(masked_l1(gather_at(outputs["reg"], ind), targets["reg"], mask.unsqueeze(-1))),
            "kps": batch_mean(masked_l1(gather_at(outputs["kps"], ind), targets["kps"], targets["kps_mask"])),
            "hm_hp": self._focal(outputs["hm_hp"], targets["hm_hp"], weight),
            "hp_offset": batch_mean(masked_l1(gather_at(outputs["hp_offset"], targets["hp_ind"]),
                                              targets["hp_offset"], targets["hp_mask"].unsqueeze(-1))),
        }
        if self.guidance:
            out["guide_hm"] = self._focal(outputs["guide_hm"], targets["hm"], weight)
            out["guide_box"] = self._box(outputs["guide_wh"], outputs["guide_reg"], targets, self.guide_kind)
        return out

    def forward(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        terms = self.terms(outputs, targets)
        total = sum(self.weights[name] * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}

    def _check(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> None:
        """Fail early, with a hint, on a missing key or targets encoded for another output size."""
        needed = MAIN_OUTPUTS + (GUIDE_OUTPUTS if self.guidance else ())
        missing = [name for name in needed if name not in outputs]
        if missing:
            hint = (" (the loss has guidance on: build the model with model.guidance=true or the loss "
                    "with guidance=False)" if set(missing) & set(GUIDE_OUTPUTS) else "")
            raise KeyError(f"PGNetLoss: model outputs lack {', '.join(missing)}{hint}")
        missing = [key for key in TARGET_KEYS if key not in targets]
        if missing:
            raise KeyError(f"PGNetLoss: targets lack {', '.join(missing)}; encode them with pgnet.codec.encode_targets")
        out_hw, tgt_hw = tuple(outputs["hm"].shape[-2:]), tuple(targets["hm"].shape[-2:])
        if out_hw != tgt_hw:
            raise ValueError(
                f"PGNetLoss: heatmap targets are {tgt_hw} but the model outputs {out_hw}; encode targets "
                f"for the output size (input size / 4)")
        h, w = out_hw
        for key in ("ind", "hp_ind"):
            ind = targets[key]
            if ind.numel() and (int(ind.min()) < 0 or int(ind.max()) >= h * w):
                raise ValueError(
                    f"PGNetLoss: targets[{key!r}] holds locations outside the {h}x{w} output map; "
                    f"encode targets for this output size")
