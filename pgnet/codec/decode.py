"""Decoding network outputs into people: CenterNet's multi_pose_decode, flip test and COCO results.

Coordinates are continuous (pixel i covers [i, i+1)); output pixels times the stride are input pixels.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pgnet.codec.targets import NUM_JOINTS, STRIDE
from pgnet.config import KEYPOINT_REFINES, EvalConfig
from pgnet.data.skeleton import FLIP_INDEX

SNAP_DISTANCE = 0.3  # CenterNet: a heatmap peak replaces a regressed key point within 0.3 x the box's longer side
LOGIT_EPS = 1e-6


def heatmap_nms(heat: Tensor, kernel: int = 3) -> Tensor:
    """Keep only local maxima of a (B, C, H, W) score map (CenterNet's max-pool NMS)."""
    hmax = F.max_pool2d(heat, kernel, stride=1, padding=(kernel - 1) // 2)
    return heat * (hmax == heat).to(heat.dtype)


def topk_per_channel(scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-k of each channel of (B, C, H, W): scores, flat indices, ys, xs, each (B, C, k)."""
    b, c, h, w = scores.shape
    values, inds = scores.reshape(b, c, h * w).topk(min(k, h * w), dim=-1)
    return values, inds, torch.div(inds, w, rounding_mode="floor").to(scores.dtype), (inds % w).to(scores.dtype)


def gather_feature(feat: Tensor, inds: Tensor) -> Tensor:
    """(B, C, H, W) read at flat locations (B, K) -> (B, K, C)."""
    b, c, h, w = feat.shape
    flat = feat.reshape(b, c, h * w)
    return flat.gather(2, inds.unsqueeze(1).expand(b, c, inds.shape[1])).permute(0, 2, 1)


@torch.no_grad()
def decode_outputs(outputs: dict[str, Tensor], settings: EvalConfig | None = None,
                   kp_threshold: float = 0.1) -> list[dict]:
    """People found in a batch of outputs, one dict per image, in output pixels (numpy arrays).

    `settings` are the `eval.*` decoding keys (`top_k`, `rescore`, `snap_score_weight`,
    `snap_box_margin`, `keypoint_refine`); None: `EvalConfig()`'s defaults, the same decoding that
    training and `pgnet eval` use. CenterNet's own decoding is `rescore=False, snap_score_weight=0,
    snap_box_margin=0, keypoint_refine="offset"`.

    Each dict holds `boxes` (N, 4) xyxy, `scores` (N,) and `keypoints` (N, 17, 3) as x, y,
    confidence, sorted by score. Centres are the top-k local maxima of sigmoid(hm); boxes come
    from `wh` and `reg`; key points are regressed from the integer centre (`kps`) and snapped to
    a peak of sigmoid(hm_hp) (+ `hp_offset`): of the peaks scoring above `kp_threshold` that lie
    inside the box (widened by `snap_box_margin` x its width and height on every side; 0 is
    CenterNet's box) and within 0.3 x the box's longer side L of the regressed point, the one
    minimising d / L - w * s (d: its distance to the regressed point, s: its score, w:
    `snap_score_weight`). w = 0 takes the nearest such peak (CenterNet), w > 0 lets a stronger
    peak win over a nearer, weaker one. A snapped key point's confidence is its peak score; an
    unsnapped one gets the key-point heatmap's value at the regressed location. `keypoint_refine`
    places a peak inside its cell: `offset` (CenterNet: `hp_offset` read at the peak) or `centroid`
    (the key-point heatmap around the peak; see `peak_positions`).
    A person's score is its centre peak (CenterNet); with `rescore`, times the mean confidence
    of its 17 key points, so that people whose key points were found rank first. `centre_scores`
    keeps the centre peaks (the score threshold of `detections_to_coco` applies to them: rescoring
    reorders people, it does not drop any).
    """
    s = settings or EvalConfig()
    top_k = s.top_k
    heat = heatmap_nms(torch.sigmoid(outputs["hm"].float()))
    b, _, h, w = heat.shape
    scores, inds, ys, xs = (t[:, 0] for t in topk_per_channel(heat, top_k))  # (B, K)
    k = scores.shape[1]
    reg = gather_feature(outputs["reg"].float(), inds)
    wh = gather_feature(outputs["wh"].float(), inds)
    kps = gather_feature(outputs["kps"].float(), inds).reshape(b, k, -1, 2)
    kps = kps + torch.stack([xs, ys], dim=-1).unsqueeze(2)  # offsets are from the integer centre
    cx, cy = xs + reg[..., 0], ys + reg[..., 1]
    boxes = torch.stack([cx - wh[..., 0] / 2, cy - wh[..., 1] / 2, cx + wh[..., 0] / 2, cy + wh[..., 1] / 2], -1)
    keypoints = _snap_keypoints(kps, boxes, outputs, top_k, kp_threshold, s.snap_score_weight, s.snap_box_margin,
                                s.keypoint_refine)
    centre_scores = scores
    if s.rescore:
        rescored = scores * keypoints[..., 2].mean(-1)
        order = rescored.argsort(dim=1, descending=True, stable=True)  # ties keep the centre-peak order
        scores, centre_scores = rescored.gather(1, order), centre_scores.gather(1, order)
        boxes = boxes.gather(1, order[..., None].expand_as(boxes))
        keypoints = keypoints.gather(1, order[..., None, None].expand_as(keypoints))
    return [{"boxes": boxes[i].cpu().numpy(), "scores": scores[i].cpu().numpy(),
             "centre_scores": centre_scores[i].cpu().numpy(), "keypoints": keypoints[i].cpu().numpy()}
            for i in range(b)]


def peak_positions(hm_hp: Tensor, hp_offset: Tensor, peak_inds: Tensor, refine: str = "offset") -> Tensor:
    """(B, J, P, 2) x, y of the key-point heatmap peaks at flat cells `peak_inds` (B, J, P).

    `hm_hp` (B, J, H, W) are scores (after the sigmoid), `hp_offset` (B, 2, H, W) the offset head.
    `offset`: the peak's cell corner plus `hp_offset` read there (CenterNet). `centroid`: the mean of
    the centres of the 3 x 3 cells around the peak, each weighted by its score squared (cells outside
    the map weigh 0): the heatmap's own sub-cell evidence, for runs where the offset head has not
    learned much (a cpu_small checkpoint: key-point AP 0.498 against 0.456 on 512 held-out images).
    """
    if refine not in KEYPOINT_REFINES:
        raise ValueError(f"keypoint_refine={refine!r} is not one of {', '.join(KEYPOINT_REFINES)}")
    b, joints, h, w = hm_hp.shape
    corner = torch.stack([peak_inds % w, torch.div(peak_inds, w, rounding_mode="floor")], dim=-1).to(hm_hp.dtype)
    if refine == "offset":
        offsets = gather_feature(hp_offset.float(), peak_inds.reshape(b, -1)).reshape(b, joints, -1, 2)
        return corner + offsets
    weight = hm_hp.reshape(b * joints, 1, h, w) ** 2
    shifts = torch.tensor([-1.0, 0.0, 1.0], dtype=weight.dtype, device=weight.device)
    kernels = torch.stack([torch.ones(3, 3, dtype=weight.dtype, device=weight.device),
                           shifts.expand(3, 3), shifts[:, None].expand(3, 3)]).unsqueeze(1)  # sum, x, y
    sums = F.conv2d(weight, kernels, padding=1).reshape(b, joints, 3, h * w)
    at_peaks = sums.gather(3, peak_inds.unsqueeze(2).expand(b, joints, 3, peak_inds.shape[-1]))  # (B, J, 3, P)
    shift = at_peaks[:, :, 1:] / at_peaks[:, :, :1].clamp(min=torch.finfo(weight.dtype).tiny)
    return corner + 0.5 + shift.permute(0, 1, 3, 2)


def _snap_keypoints(kps: Tensor, boxes: Tensor, outputs: dict[str, Tensor], top_k: int,
                    threshold: float, score_weight: float = 0.0, box_margin: float = 0.0,
                    refine: str = "offset") -> Tensor:
    """(B, K, J, 3) key points: regressed ones `kps` (B, K, J, 2) replaced by near heatmap peaks."""
    hm_hp = torch.sigmoid(outputs["hm_hp"].float())
    b, joints, h, w = hm_hp.shape
    peak_scores, peak_inds, _, _ = topk_per_channel(heatmap_nms(hm_hp), top_k)  # (B, J, P)
    peaks = peak_positions(hm_hp, outputs["hp_offset"], peak_inds, refine)  # (B, J, P, 2)
    # distance of every regressed key point (B, K, J) to every peak of its joint (P)
    # (hypot of the coordinates: `norm` over the last dim of these strided tensors is ~4x as slow)
    dist = torch.hypot(kps[..., 0].unsqueeze(3) - peaks[..., 0].unsqueeze(1),
                       kps[..., 1].unsqueeze(3) - peaks[..., 1].unsqueeze(1))  # (B, K, J, P)
    x1, y1, x2, y2 = (boxes[..., i, None, None] for i in range(4))  # (B, K, 1, 1)
    side = torch.maximum(x2 - x1, y2 - y1)
    margin_x, margin_y = box_margin * (x2 - x1), box_margin * (y2 - y1)
    x1, x2, y1, y2 = x1 - margin_x, x2 + margin_x, y1 - margin_y, y2 + margin_y
    px, py = peaks[..., 0].unsqueeze(1), peaks[..., 1].unsqueeze(1)  # (B, 1, J, P)
    candidate = (peak_scores > threshold).unsqueeze(1) & (dist <= SNAP_DISTANCE * side) \
        & (px >= x1) & (px <= x2) & (py >= y1) & (py <= y2)  # (B, K, J, P)
    cost = dist / side.clamp(min=1e-6) - score_weight * peak_scores.unsqueeze(1)
    best_cost, chosen = cost.masked_fill(~candidate, float("inf")).min(dim=-1)  # (B, K, J)
    j_index = torch.arange(joints, device=kps.device).view(1, 1, joints)
    b_index = torch.arange(b, device=kps.device).view(b, 1, 1)
    snapped_xy = peaks[b_index, j_index, chosen]  # (B, K, J, 2)
    snapped_score = peak_scores[b_index, j_index, chosen]
    snap = torch.isfinite(best_cost)
    cell_x = kps[..., 0].floor().long().clamp(0, w - 1)
    cell_y = kps[..., 1].floor().long().clamp(0, h - 1)
    cells = cell_y * w + cell_x  # (B, K, J)
    regressed_score = hm_hp.reshape(b, joints, h * w).gather(2, cells.permute(0, 2, 1)).permute(0, 2, 1)
    xy = torch.where(snap.unsqueeze(-1), snapped_xy, kps)
    score = torch.where(snap, snapped_score, regressed_score)
    return torch.cat([xy, score.unsqueeze(-1)], dim=-1)


def to_image_coords(detections: dict, inv_affine: np.ndarray, stride: int = STRIDE) -> dict:
    """Map one image's detections from output pixels to original image pixels.

    `inv_affine` (2, 3) maps input pixels to image pixels (the sample's `inv_affine`). Box
    corners are mapped and the enclosing box taken, which is exact without rotation.
    """
    m = np.asarray(inv_affine, np.float64).reshape(2, 3)
    boxes = np.asarray(detections["boxes"], np.float64).reshape(-1, 4) * stride
    corners = boxes[:, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 4, 2) @ m[:, :2].T + m[:, 2]
    kps = np.asarray(detections["keypoints"], np.float64).reshape(len(boxes), NUM_JOINTS, 3).copy()
    kps[..., :2] = kps[..., :2] * stride @ m[:, :2].T + m[:, 2]
    out = dict(detections)
    out["boxes"] = np.concatenate([corners.min(1), corners.max(1)], axis=1).astype(np.float32)
    out["keypoints"] = kps.astype(np.float32)
    return out


def _unmirror(maps: Tensor, swap: Sequence[int] | None = None) -> Tensor:
    """Maps of a mirrored image flipped back in x, with channel groups reordered by `swap`."""
    maps = maps.flip(-1)
    return maps if swap is None else maps[:, list(swap)]


def _unmirror_offsets(offsets: Tensor, joints: int | None = None) -> Tensor:
    """(B, 2n, H, W) x/y offsets of a mirrored image, back in the unflipped frame.

    Mirroring maps x -> W - x and cell c -> W-1-c, so an offset from a cell's corner becomes 1 - dx
    (y offsets are unchanged). With `joints`, the channel pairs are also swapped left/right.
    """
    b, c, h, w = offsets.shape
    pairs = offsets.flip(-1).reshape(b, c // 2, 2, h, w)
    if joints is not None:
        pairs = pairs[:, list(FLIP_INDEX)]
    pairs = torch.stack([1 - pairs[:, :, 0], pairs[:, :, 1]], dim=2)
    return pairs.reshape(b, c, h, w)


@torch.no_grad()
def flip_merge(outputs: dict[str, Tensor], outputs_of_flipped_image: dict[str, Tensor]) -> dict[str, Tensor]:
    """CenterNet's flip test: average the outputs of an image and of its mirror flipped back.

    Heatmaps are averaged as probabilities (and returned as logits), with the key-point maps'
    left/right channels swapped; box sizes and centre-relative key-point offsets are averaged;
    the sub-pixel offsets `reg` and `hp_offset` are taken from the unflipped image, as CenterNet does.
    """
    a, m = outputs, outputs_of_flipped_image
    merged = dict(a)
    for name, swap in (("hm", None), ("hm_hp", FLIP_INDEX)):
        p = (torch.sigmoid(a[name].float()) + _unmirror(torch.sigmoid(m[name].float()), swap)) / 2
        merged[name] = torch.logit(p.clamp(LOGIT_EPS, 1 - LOGIT_EPS))
    merged["wh"] = (a["wh"] + _unmirror(m["wh"])) / 2
    merged["kps"] = (a["kps"] + _unmirror_offsets(m["kps"], joints=NUM_JOINTS)) / 2
    return merged


def detections_to_coco(detections: dict, image_id: int, score_threshold: float = 0.0) -> list[dict]:
    """COCO result dicts (boxes and key points) of one image's detections in image pixels; people whose
    `centre_scores` (else `scores`) are below `score_threshold` are left out."""
    # Imported here: pgnet.evaluation imports pgnet.data, which imports this module (an import cycle at the top).
    from pgnet.evaluation.results import results_from_detections
    keep = np.asarray(detections.get("centre_scores", detections["scores"])) >= score_threshold
    if not keep.any():
        return []
    return results_from_detections(image_id, np.asarray(detections["boxes"])[keep],
                                   np.asarray(detections["scores"])[keep],
                                   np.asarray(detections["keypoints"])[keep])


def coco_results(outputs: dict[str, Tensor], image_ids: Sequence[int], inv_affines: np.ndarray | Tensor,
                 settings: EvalConfig | None = None, *, flipped_outputs: dict[str, Tensor] | None = None,
                 kp_threshold: float = 0.1, stride: int = STRIDE) -> list[dict]:
    """A batch of outputs to COCO results in image pixels: (flip merge,) decode, map back, format.

    `image_ids` (B,) and `inv_affines` (B, 2, 3) are the samples' meta; `settings` the `eval.*` keys
    (`decode_outputs`; `score_threshold` drops people here); `flipped_outputs` are the outputs for the
    mirrored images `model(images.flip(-1))` (the flip test) or None. `settings.flip_test` is the
    caller's business: it decides whether to pass `flipped_outputs`.
    """
    settings = settings or EvalConfig()
    if flipped_outputs is not None:
        outputs = flip_merge(outputs, flipped_outputs)
    if isinstance(inv_affines, Tensor):
        inv_affines = inv_affines.detach().cpu().numpy()
    results = []
    detections = decode_outputs(outputs, settings, kp_threshold)
    for det, image_id, inv in zip(detections, image_ids, inv_affines):
        results.extend(detections_to_coco(to_image_coords(det, inv, stride), int(image_id),
                                          settings.score_threshold))
    return results
