"""Training targets of CenterNet multi-pose: centre and key-point heatmaps plus regression slots.

`encode_targets` builds the dict of DEVELOPERS.md ("Training targets"); `oracle_outputs` is its inverse,
the outputs a perfect network would give (used to check decoding and evaluation end to end).
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from pgnet.codec.gaussian import draw_gaussian, heatmap_radius

log = logging.getLogger("pgnet.data")

NUM_JOINTS = 17
STRIDE = 4
TARGET_KEYS = ("hm", "hm_hp", "hm_weight", "ind", "mask", "box", "reg", "kps", "kps_mask",
               "hp_ind", "hp_offset", "hp_mask")


def output_size(input_size: tuple[int, int], stride: int = STRIDE) -> tuple[int, int]:
    """(H, W) of the stride-`stride` output maps for an (h, w) input."""
    h, w = (int(v) for v in input_size)
    if h % stride or w % stride or h <= 0 or w <= 0:
        raise ValueError(f"input size {h}x{w} must be positive multiples of the stride {stride}")
    return h // stride, w // stride


def empty_targets(out_h: int, out_w: int, max_people: int, joints: int = NUM_JOINTS) -> dict[str, np.ndarray]:
    """Targets of an image without people: all-zero heatmaps, every pixel counted, no slots used."""
    k = max_people
    return {
        "hm": np.zeros((1, out_h, out_w), np.float32),
        "hm_hp": np.zeros((joints, out_h, out_w), np.float32),
        "hm_weight": np.ones((1, out_h, out_w), np.float32),
        "ind": np.zeros((k,), np.int64),
        "mask": np.zeros((k,), np.float32),
        "box": np.zeros((k, 4), np.float32),
        "reg": np.zeros((k, 2), np.float32),
        "kps": np.zeros((k, 2 * joints), np.float32),
        "kps_mask": np.zeros((k, 2 * joints), np.float32),
        "hp_ind": np.zeros((k * joints,), np.int64),
        "hp_offset": np.zeros((k * joints, 2), np.float32),
        "hp_mask": np.zeros((k * joints,), np.float32),
    }


def encode_targets(
    boxes_xyxy: np.ndarray,
    keypoints: np.ndarray,
    crowd_boxes: np.ndarray,
    input_size: tuple[int, int],
    max_people: int,
    stride: int = STRIDE,
) -> dict[str, np.ndarray]:
    """CenterNet multi-pose targets for one image; all inputs in input pixels.

    `boxes_xyxy` (N, 4) people, `keypoints` (N, 17, 3) as x, y, v (v > 0: labelled),
    `crowd_boxes` (M, 4) crowd regions. Boxes are clipped to the map first (as CenterNet does),
    so a person cut by the crop is centred on its visible part; a person with nothing inside
    the map (an empty clipped box) is dropped. Beyond `max_people` the largest people keep a slot; the
    others still get their heatmap peaks (they are real people, not background) but no
    regression targets, and a warning says to raise `data.max_people`. Crowd regions get
    `hm_weight` 0 (ignored by the heatmap losses). People without labelled key points get
    centre and box targets with masked key-point targets, as COCO's key-point evaluation
    ignores them while its box evaluation counts them.
    """
    out_h, out_w = output_size(input_size, stride)
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4) / stride
    kps = np.asarray(keypoints, np.float64)
    if kps.shape != (len(boxes), NUM_JOINTS, 3):
        raise ValueError(f"encode_targets: keypoints must be ({len(boxes)}, {NUM_JOINTS}, 3) for "
                         f"{len(boxes)} boxes, got {kps.shape}")
    joints = NUM_JOINTS
    targets = empty_targets(out_h, out_w, max_people, joints)
    _ignore_crowd(targets["hm_weight"][0], np.asarray(crowd_boxes, np.float64).reshape(-1, 4) / stride)

    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, out_w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, out_h)
    sizes = boxes[:, 2:] - boxes[:, :2]
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    valid = (sizes > 0).all(1)  # then the centre lies inside the map
    people = np.flatnonzero(valid)
    people = people[np.argsort(-(sizes[people, 0] * sizes[people, 1]), kind="stable")]  # largest first
    if len(people) > max_people:
        log.warning("an image has %d people but data.max_people=%d: the %d smallest get no regression "
                    "targets; raise data.max_people to keep them", len(people), max_people,
                    len(people) - max_people)
    if len(people) < len(boxes):
        log.debug("%d people dropped: their boxes lie outside the output map", len(boxes) - len(people))

    points = kps[..., :2] / stride
    labelled = (kps[..., 2] > 0) & (points[..., 0] >= 0) & (points[..., 0] < out_w) \
        & (points[..., 1] >= 0) & (points[..., 1] < out_h)
    for slot, person in enumerate(people):
        radius = heatmap_radius(sizes[person, 1], sizes[person, 0])
        center_int = np.floor(centers[person]).astype(np.int64)
        draw_gaussian(targets["hm"][0], center_int, radius)
        for j in np.flatnonzero(labelled[person]):
            draw_gaussian(targets["hm_hp"][j], np.floor(points[person, j]).astype(np.int64), radius)
        if slot < max_people:
            _fill_slot(targets, slot, boxes[person], centers[person], center_int,
                       points[person], labelled[person], out_w)
    return targets


def _fill_slot(targets: dict[str, np.ndarray], slot: int, box: np.ndarray, center: np.ndarray,
               center_int: np.ndarray, points: np.ndarray, labelled: np.ndarray, out_w: int) -> None:
    """Regression targets of one person in slot `slot`: box, centre offset and key points."""
    joints = len(points)
    targets["ind"][slot] = center_int[1] * out_w + center_int[0]
    targets["mask"][slot] = 1
    targets["box"][slot] = box
    targets["reg"][slot] = center - center_int
    j = np.flatnonzero(labelled)  # the labelled joints, all at once
    point_int = np.floor(points[j]).astype(np.int64)
    targets["kps"][slot].reshape(joints, 2)[j] = points[j] - center_int  # x, y of joint j at 2j, 2j + 1
    targets["kps_mask"][slot].reshape(joints, 2)[j] = 1
    flat = slot * joints + j
    targets["hp_ind"][flat] = point_int[:, 1] * out_w + point_int[:, 0]
    targets["hp_offset"][flat] = points[j] - point_int
    targets["hp_mask"][flat] = 1


def _ignore_crowd(weight: np.ndarray, crowd_boxes: np.ndarray) -> None:
    """Zero the heatmap-loss weight over every output cell a crowd box touches."""
    out_h, out_w = weight.shape
    for x1, y1, x2, y2 in crowd_boxes:
        left, top = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
        right, bottom = min(out_w, int(np.ceil(x2))), min(out_h, int(np.ceil(y2)))
        if right > left and bottom > top:
            weight[top:bottom, left:right] = 0


def oracle_outputs(targets: dict[str, Tensor], eps: float = 1e-4) -> dict[str, Tensor]:
    """The model outputs (logits for heatmaps) that a perfect network would give for batched targets.

    Heatmap logits are `logit(clamp(target, eps, 1 - eps))`; `wh`, `reg`, `kps` and `hp_offset`
    hold the targets at the people's (key points') locations and 0 elsewhere. Decoding these
    must reproduce the ground truth: the round-trip check of encoding and decoding.
    """
    hm, hm_hp = targets["hm"].float(), targets["hm_hp"].float()
    b, _, h, w = hm.shape
    out = {"hm": torch.logit(hm.clamp(eps, 1 - eps)), "hm_hp": torch.logit(hm_hp.clamp(eps, 1 - eps))}
    box = targets["box"].float()
    out["wh"] = _scatter(box[..., 2:] - box[..., :2], targets["ind"], targets["mask"], h, w)
    out["reg"] = _scatter(targets["reg"].float(), targets["ind"], targets["mask"], h, w)
    out["kps"] = _scatter(targets["kps"].float(), targets["ind"], targets["mask"], h, w)
    out["hp_offset"] = _scatter(targets["hp_offset"].float(), targets["hp_ind"], targets["hp_mask"], h, w)
    return out


def _scatter(values: Tensor, ind: Tensor, mask: Tensor, h: int, w: int) -> Tensor:
    """Dense (B, C, H, W) maps holding `values` (B, K, C) at flat locations `ind` where `mask` > 0."""
    b, _, c = values.shape
    dense = values.new_zeros(b, h * w, c)
    for i in range(b):
        keep = mask[i] > 0
        dense[i, ind[i][keep]] = values[i][keep]
    return dense.permute(0, 2, 1).reshape(b, c, h, w)
