"""Tests for pgnet.losses: IoU-family losses against torchvision.ops, the focal loss against a plain
reference, and PGNetLoss's terms, crossed CDIoU scheme and micro-batch invariance.
"""
from __future__ import annotations

import math

import pytest
import torch
import torchvision.ops as ops
from torch.testing import assert_close

from pgnet.config import BOX_LOSSES, LossConfig
from pgnet.losses import BOX_LOSS_VARIANTS, PGNetLoss, box_iou_loss, box_loss_kinds, focal_loss
from pgnet.losses import iou as iou_module

KINDS = ("iou", "giou", "diou", "ciou")
TORCHVISION_LOSSES = {
    "giou": ops.generalized_box_iou_loss,
    "diou": ops.distance_box_iou_loss,
    "ciou": ops.complete_box_iou_loss,
}
# Written out here, independently of the library: the paper's crossed scheme is GIoU on the
# main head and the distance form (DIoU) on the guidance head.
EXPECTED_KINDS = {"iou": ("iou", "iou"), "giou": ("giou", "giou"), "diou": ("diou", "diou"),
                  "ciou": ("ciou", "ciou"), "cdiou": ("giou", "diou")}
J = 17


# ---------------------------------------------------------------- boxes

def random_boxes(n: int, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """Valid xyxy boxes spread so that pairs overlap, nest or are disjoint."""
    xy = torch.rand(n, 2, generator=gen, dtype=dtype) * 20
    wh = torch.rand(n, 2, generator=gen, dtype=dtype) * 15 + 0.05
    return torch.cat([xy, xy + wh], dim=1)


EDGE_CASES = {  # name: (pred, target), xyxy
    "identical": ([0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]),
    "disjoint": ([0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 8.0, 9.0]),
    "far_apart": ([0.0, 0.0, 2.0, 3.0], [500.0, 400.0, 510.0, 420.0]),
    "nested": ([2.0, 3.0, 5.0, 7.0], [0.0, 0.0, 10.0, 10.0]),
    "nested_same_centre": ([4.0, 4.0, 6.0, 6.0], [0.0, 0.0, 10.0, 10.0]),
    "touching_edge": ([0.0, 0.0, 2.0, 2.0], [2.0, 0.0, 4.0, 2.0]),
    "touching_corner": ([0.0, 0.0, 2.0, 2.0], [2.0, 2.0, 4.0, 4.0]),
    "zero_width_pred": ([3.0, 3.0, 3.0, 8.0], [0.0, 0.0, 10.0, 10.0]),
    "zero_height_pred": ([3.0, 3.0, 8.0, 3.0], [0.0, 0.0, 10.0, 10.0]),
    "point_pred": ([3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 10.0, 10.0]),
    "zero_width_target": ([0.0, 0.0, 10.0, 10.0], [5.0, 1.0, 5.0, 9.0]),
    "both_points_coincident": ([3.0, 3.0, 3.0, 3.0], [3.0, 3.0, 3.0, 3.0]),
    "both_lines_coincident": ([1.0, 2.0, 1.0, 6.0], [1.0, 2.0, 1.0, 6.0]),
    "both_points_apart": ([1.0, 1.0, 1.0, 1.0], [4.0, 5.0, 4.0, 5.0]),
    "point_and_line": ([2.0, 2.0, 2.0, 2.0], [2.0, 0.0, 2.0, 5.0]),
}


def edge_boxes(dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    pred = torch.tensor([p for p, _ in EDGE_CASES.values()], dtype=dtype)
    target = torch.tensor([t for _, t in EDGE_CASES.values()], dtype=dtype)
    return pred, target


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", sorted(TORCHVISION_LOSSES))
def test_box_loss_matches_torchvision_on_random_boxes(kind, dtype):
    gen = torch.Generator().manual_seed(1)
    pred, target = random_boxes(2000, gen, dtype), random_boxes(2000, gen, dtype)
    ours = box_iou_loss(pred, target, kind, reduction="none")
    reference = TORCHVISION_LOSSES[kind](pred, target, reduction="none")
    assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert_close(box_iou_loss(pred, target, kind), reference.mean(), atol=1e-5, rtol=1e-5)
    assert_close(box_iou_loss(pred, target, kind, reduction="sum"), reference.sum(), atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(TORCHVISION_LOSSES))
def test_box_loss_matches_torchvision_on_edge_cases(kind):
    pred, target = edge_boxes()
    reference = TORCHVISION_LOSSES[kind](pred, target, reduction="none")
    finite = torch.isfinite(reference)
    # torchvision is NaN only where CIoU's aspect ratio of a 0x0 box is undefined (atan(0 / 0)).
    has_point_box = torch.stack([(b[:, 2:] == b[:, :2]).all(1) for b in (pred, target)]).any(0)
    assert_close(finite, ~has_point_box if kind == "ciou" else torch.ones_like(finite))
    ours = box_iou_loss(pred, target, kind, reduction="none")
    assert_close(ours[finite], reference[finite], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(TORCHVISION_LOSSES))
def test_box_loss_gradients_match_torchvision(kind):
    """Same gradients too: no push through a 0-area overlap, CIoU's alpha held constant."""
    gen = torch.Generator().manual_seed(8)
    edge_pred, edge_target = edge_boxes(torch.float64)
    pred = torch.cat([random_boxes(300, gen, torch.float64), edge_pred])
    target = torch.cat([random_boxes(300, gen, torch.float64), edge_target])
    grads = []
    for fn in (lambda p, t: box_iou_loss(p, t, kind, reduction="none"), TORCHVISION_LOSSES[kind]):
        p, t = pred.clone().requires_grad_(), target.clone().requires_grad_()
        fn(p, t).sum().backward()
        grads.append((p.grad, t.grad))
    (ours_p, ours_t), (ref_p, ref_t) = grads
    finite = torch.isfinite(ref_p).all(1) & torch.isfinite(ref_t).all(1)
    # torchvision's CIoU gradient goes through atan(w / h): NaN where a box has zero height.
    zero_height = (pred[:, 3] == pred[:, 1]) | (target[:, 3] == target[:, 1])
    assert_close(finite, ~zero_height if kind == "ciou" else torch.ones_like(finite))
    assert_close(ours_p[finite], ref_p[finite], atol=1e-6, rtol=1e-6)
    assert_close(ours_t[finite], ref_t[finite], atol=1e-6, rtol=1e-6)


def test_iou_loss_is_one_minus_box_iou_diagonal():
    gen = torch.Generator().manual_seed(2)
    pred, target = random_boxes(500, gen), random_boxes(500, gen)
    edge_pred, edge_target = edge_boxes()
    pred, target = torch.cat([pred, edge_pred]), torch.cat([target, edge_target])
    reference = 1 - ops.box_iou(pred, target).diagonal()
    finite = torch.isfinite(reference)  # box_iou is 0/0 for two zero-area boxes
    assert finite.sum() >= len(pred) - 4
    assert_close(box_iou_loss(pred, target, "iou", reduction="none")[finite], reference[finite],
                 atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
@pytest.mark.parametrize("kind", KINDS)
def test_box_loss_and_gradient_finite_on_edge_cases(kind, case):
    pred_box, target_box = EDGE_CASES[case]
    pred = torch.tensor([pred_box], requires_grad=True)
    target = torch.tensor([target_box], requires_grad=True)
    loss = box_iou_loss(pred, target, kind)
    loss.backward()
    assert torch.isfinite(loss)
    assert 0 <= loss.item() <= 3  # every IoU-family loss lies in [0, 3)
    assert torch.isfinite(pred.grad).all() and torch.isfinite(target.grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_identical_boxes_give_zero_loss(kind):
    boxes = random_boxes(50, torch.Generator().manual_seed(3))
    assert_close(box_iou_loss(boxes, boxes.clone(), kind, reduction="none"), torch.zeros(50), atol=1e-5, rtol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", KINDS)
def test_box_loss_of_no_boxes_is_zero_with_zero_gradient(kind, reduction):
    pred = torch.zeros(0, 4, requires_grad=True)
    loss = box_iou_loss(pred, torch.zeros(0, 4), kind, reduction=reduction)
    assert loss.shape == () and loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and pred.grad.shape == (0, 4)


def test_box_loss_rejects_bad_input():
    boxes = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="giou"):
        box_iou_loss(boxes, boxes, "gio")
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        box_iou_loss(boxes, torch.zeros(2, 4), "giou")
    with pytest.raises(ValueError, match="none, mean, sum"):
        box_iou_loss(boxes, boxes, "giou", reduction="avg")


def test_a_new_kind_is_one_registry_entry(monkeypatch):
    monkeypatch.setitem(iou_module._BOX_LOSSES, "l1", lambda p, t, eps: (p - t).abs().sum(-1))
    assert box_iou_loss(torch.ones(2, 4), torch.zeros(2, 4), "l1").item() == 4.0


def test_variants_match_the_config():
    assert BOX_LOSS_VARIANTS == ("iou", "giou", "diou", "ciou", "cdiou")
    assert set(BOX_LOSS_VARIANTS) == set(BOX_LOSSES)


@pytest.mark.parametrize("variant", BOX_LOSS_VARIANTS)
def test_box_loss_kinds(variant):
    assert box_loss_kinds(variant) == EXPECTED_KINDS[variant]


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        box_loss_kinds("eiou")
    assert all(v in str(info.value) for v in BOX_LOSS_VARIANTS)


# ---------------------------------------------------------------- focal loss

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


def gaussian_heatmaps(b, c, h, w, peaks_per_map, gen):
    """(b, c, h, w) heatmaps with up to `peaks_per_map` random Gaussian peaks per map."""
    hm = torch.zeros(b, c, h, w)
    for heatmap in hm.view(b * c, h, w):
        for _ in range(int(torch.randint(0, peaks_per_map + 1, (1,), generator=gen))):
            cx = int(torch.randint(0, w, (1,), generator=gen))
            cy = int(torch.randint(0, h, (1,), generator=gen))
            draw_gaussian(heatmap, cx, cy, 0.5 + 2 * torch.rand(1, generator=gen).item())
    return hm


@pytest.mark.parametrize("alpha,beta", [(2.0, 4.0), (1.0, 2.0), (3.0, 1.5)])
@pytest.mark.parametrize("with_weight", [False, True])
def test_focal_matches_plain_reference(alpha, beta, with_weight):
    gen = torch.Generator().manual_seed(4)
    target = gaussian_heatmaps(3, 2, 12, 16, 3, gen)
    logits = torch.randn(3, 2, 12, 16, generator=gen) * 3
    weight = (torch.rand(3, 1, 12, 16, generator=gen) > 0.2).float() if with_weight else torch.ones(3, 1, 12, 16)
    ours = focal_loss(logits, target, weight if with_weight else None, alpha=alpha, beta=beta)
    assert_close(ours.double(), reference_focal(logits, target, weight, alpha, beta), atol=1e-5, rtol=1e-5)


def test_focal_ignores_weighted_out_pixels():
    gen = torch.Generator().manual_seed(5)
    target = gaussian_heatmaps(2, 3, 10, 10, 2, gen)
    weight = torch.ones(2, 1, 10, 10)
    weight[:, :, 2:6, 3:8] = 0
    logits = torch.randn(2, 3, 10, 10, generator=gen, requires_grad=True)
    loss = focal_loss(logits, target, weight)
    loss.backward()
    assert (logits.grad[:, :, 2:6, 3:8] == 0).all()
    assert (logits.grad[:, :, 6:, :] != 0).any()
    # Whatever the ignored pixels hold (logits or target, a peak included), the loss is unchanged.
    other_logits, other_target = logits.detach().clone(), target.clone()
    other_logits[:, :, 2:6, 3:8] = 50.0
    other_target[:, :, 2:6, 3:8] = 1.0
    assert_close(focal_loss(other_logits, other_target, weight), loss.detach())
    assert not torch.allclose(focal_loss(other_logits, other_target), focal_loss(logits.detach(), target))


def test_focal_is_stable_at_extreme_logits():
    target = torch.zeros(1, 1, 2, 2)
    target[0, 0, 0, 0] = 1.0
    # sigmoid(-200) underflows to 0 in float32: log(sigmoid(x)) would be -inf here.
    logits = torch.tensor([[[[-200.0, 200.0], [-200.0, -200.0]]]], requires_grad=True)
    loss = focal_loss(logits, target)
    loss.backward()
    # A peak at logit -200: (1 - p)^2 * -log p ~ 200; a background pixel at +200: p^2 * -log(1 - p) ~ 200.
    assert_close(loss, torch.tensor(400.0))
    assert torch.isfinite(logits.grad).all()


def test_focal_normalises_each_image_by_its_own_positives():
    gen = torch.Generator().manual_seed(6)
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, 1, 1] = 1
    target[1, 0, [1, 3, 5, 7], [2, 4, 6, 0]] = 1
    logits = torch.randn(2, 1, 8, 8, generator=gen)
    per_image = focal_loss(logits, target, reduction="none")
    assert per_image.shape == (2,)
    for i in range(2):
        assert_close(per_image[i], focal_loss(logits[i:i + 1], target[i:i + 1]))
    assert_close(focal_loss(logits, target), per_image.mean())


def test_focal_counts_a_peak_a_rounding_error_below_one():
    gen = torch.Generator().manual_seed(7)
    target = gaussian_heatmaps(2, 1, 8, 8, 2, gen)
    logits = torch.randn(2, 1, 8, 8, generator=gen)
    nudged = torch.where(target == 1, torch.full_like(target, 1 - 1e-6), target)
    assert_close(focal_loss(logits, nudged), focal_loss(logits, target), atol=1e-5, rtol=1e-5)


def test_focal_of_an_empty_batch_is_zero():
    logits = torch.zeros(0, 1, 4, 4, requires_grad=True)
    loss = focal_loss(logits, torch.zeros(0, 1, 4, 4))
    loss.backward()
    assert loss.item() == 0.0


def test_focal_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        focal_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 8, 8))


# ---------------------------------------------------------------- PGNetLoss

H, W, K = 24, 32, 4  # a non-square map catches x/y mix-ups in `ind`


def make_targets(people: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Training targets as DEVELOPERS.md describes them, for `people[b]` people in image b.

    People stand in disjoint vertical strips, so centres and key-point cells never collide;
    about 1 key point in 5 is unlabelled; a small corner of every image is a crowd region.
    """
    gen = torch.Generator().manual_seed(seed)
    b = len(people)
    t = {
        "hm": torch.zeros(b, 1, H, W), "hm_hp": torch.zeros(b, J, H, W), "hm_weight": torch.ones(b, 1, H, W),
        "ind": torch.zeros(b, K, dtype=torch.int64), "mask": torch.zeros(b, K), "box": torch.zeros(b, K, 4),
        "reg": torch.zeros(b, K, 2), "kps": torch.zeros(b, K, 2 * J), "kps_mask": torch.zeros(b, K, 2 * J),
        "hp_ind": torch.zeros(b, K * J, dtype=torch.int64), "hp_offset": torch.zeros(b, K * J, 2),
        "hp_mask": torch.zeros(b, K * J),
    }
    t["hm_weight"][:, :, :2, :3] = 0

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(1, generator=gen).item()

    for i, n in enumerate(people):
        assert n <= 3 <= K
        for k in range(n):
            x1, y1 = k * 10.5 + u(0.2, 1.5), u(0.5, 4.0)
            x2, y2 = x1 + u(6.0, 8.5), y1 + u(10.0, 18.0)
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            ix, iy = math.floor(cx), math.floor(cy)
            draw_gaussian(t["hm"][i, 0], ix, iy, u(1.0, 2.5))
            t["ind"][i, k], t["mask"][i, k] = iy * W + ix, 1
            t["box"][i, k] = torch.tensor([x1, y1, x2, y2])
            t["reg"][i, k] = torch.tensor([cx - ix, cy - iy])
            cols = torch.arange(math.ceil(x1), math.floor(x2))
            rows = torch.arange(math.ceil(y1), math.floor(y2))
            cells = torch.randperm(len(cols) * len(rows), generator=gen)[:J]
            for j, cell in enumerate(cells.tolist()):
                if torch.rand(1, generator=gen).item() < 0.2:
                    continue  # unlabelled key point
                gx, gy = cols[cell % len(cols)].item(), rows[cell // len(cols)].item()
                px, py = gx + u(0, 1), gy + u(0, 1)
                draw_gaussian(t["hm_hp"][i, j], gx, gy, u(0.7, 1.5))
                t["kps"][i, k, 2 * j:2 * j + 2] = torch.tensor([px - ix, py - iy])
                t["kps_mask"][i, k, 2 * j:2 * j + 2] = 1
                t["hp_ind"][i, k * J + j] = gy * W + gx
                t["hp_offset"][i, k * J + j] = torch.tensor([px - gx, py - gy])
                t["hp_mask"][i, k * J + j] = 1
    return t


def random_outputs(b: int, guidance: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """Model outputs (leaf tensors that require grad); sizes positive as the model's are."""
    gen = torch.Generator().manual_seed(seed)

    def rand(c, lo=-1.0, hi=1.0):
        return (lo + (hi - lo) * torch.rand(b, c, H, W, generator=gen)).requires_grad_()

    out = {"hm": rand(1, -4, 2), "wh": rand(2, 1, 14), "reg": rand(2, 0, 1), "kps": rand(2 * J, -8, 8),
           "hm_hp": rand(J, -4, 2), "hp_offset": rand(2, 0, 1)}
    if guidance:
        out.update(guide_hm=rand(1, -4, 2), guide_wh=rand(2, 1, 14), guide_reg=rand(2, 0, 1))
    return out


def perfect_outputs(targets: dict[str, torch.Tensor], guidance: bool = True) -> dict[str, torch.Tensor]:
    """Outputs whose sizes and offsets equal the targets at every labelled location."""
    out = {k: v.detach().clone() for k, v in random_outputs(len(targets["ind"]), guidance).items()}
    for i in range(len(targets["ind"])):
        for k in range(K):
            if targets["mask"][i, k] == 0:
                continue
            y, x = divmod(targets["ind"][i, k].item(), W)
            box = targets["box"][i, k]
            for wh, reg in (("wh", "reg"), ("guide_wh", "guide_reg")):
                if wh in out:
                    out[wh][i, :, y, x] = box[2:] - box[:2]
                    out[reg][i, :, y, x] = targets["reg"][i, k]
            out["kps"][i, :, y, x] = targets["kps"][i, k]
        for n in range(K * J):
            if targets["hp_mask"][i, n] > 0:
                y, x = divmod(targets["hp_ind"][i, n].item(), W)
                out["hp_offset"][i, :, y, x] = targets["hp_offset"][i, n]
    return out


def reference_box_term(outputs, targets, kind, wh="wh", reg="reg"):
    """Per image: decode each person's box at its centre cell, mean loss over people; mean over images."""
    per_image = []
    for i in range(len(targets["ind"])):
        pred, gt = [], []
        for k in range(K):
            if targets["mask"][i, k] > 0:
                y, x = divmod(targets["ind"][i, k].item(), W)
                cx, cy = x + outputs[reg][i, 0, y, x], y + outputs[reg][i, 1, y, x]
                bw, bh = outputs[wh][i, 0, y, x], outputs[wh][i, 1, y, x]
                pred.append(torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]))
                gt.append(targets["box"][i, k])
        per_image.append(box_iou_loss(torch.stack(pred), torch.stack(gt), kind) if pred else torch.tensor(0.0))
    return torch.stack(per_image).mean()


def reference_l1_terms(outputs, targets):
    """reg, kps, hp_offset: per image the mean absolute error over labelled coordinates."""
    terms = {"reg": [], "kps": [], "hp_offset": []}
    for i in range(len(targets["ind"])):
        errs = {"reg": [], "kps": [], "hp_offset": []}
        for k in range(K):
            y, x = divmod(targets["ind"][i, k].item(), W)
            if targets["mask"][i, k] > 0:
                errs["reg"] += (outputs["reg"][i, :, y, x] - targets["reg"][i, k]).abs().tolist()
            m = targets["kps_mask"][i, k] > 0
            errs["kps"] += (outputs["kps"][i, :, y, x] - targets["kps"][i, k])[m].abs().tolist()
        for n in range(K * J):
            if targets["hp_mask"][i, n] > 0:
                y, x = divmod(targets["hp_ind"][i, n].item(), W)
                errs["hp_offset"] += (outputs["hp_offset"][i, :, y, x] - targets["hp_offset"][i, n]).abs().tolist()
        for name, values in errs.items():
            terms[name].append(sum(values) / max(1, len(values)))
    return {name: torch.tensor(values).mean() for name, values in terms.items()}


MAIN_TERMS = {"hm", "box", "reg", "kps", "hm_hp", "hp_offset"}


@pytest.mark.parametrize("guidance", [True, False])
@pytest.mark.parametrize("variant", BOX_LOSS_VARIANTS)
def test_all_terms_finite_with_finite_gradients(variant, guidance):
    outputs, targets = random_outputs(3, guidance), make_targets([2, 0, 3])
    total, terms = PGNetLoss(LossConfig(box=variant), guidance=guidance)(outputs, targets)
    assert set(terms) == MAIN_TERMS | ({"guide_hm", "guide_box"} if guidance else set())
    assert all(torch.isfinite(v) and v.item() > 0 for v in terms.values())
    total.backward()
    assert torch.isfinite(total)
    assert all(torch.isfinite(o.grad).all() for o in outputs.values())


@pytest.mark.parametrize("variant", BOX_LOSS_VARIANTS)
def test_box_terms_use_the_variants_kinds(variant):
    outputs, targets = random_outputs(3), make_targets([2, 0, 3], seed=1)
    _, terms = PGNetLoss(LossConfig(box=variant), guidance=True)(outputs, targets)
    main, guide = EXPECTED_KINDS[variant]
    with torch.no_grad():
        assert_close(terms["box"], reference_box_term(outputs, targets, main))
        assert_close(terms["guide_box"], reference_box_term(outputs, targets, guide, "guide_wh", "guide_reg"))


def test_cdiou_is_giou_on_the_main_head_and_diou_on_the_guidance_head():
    outputs, targets = random_outputs(2), make_targets([3, 1], seed=2)
    # The same boxes on both heads: only the kinds differ between the two box terms.
    outputs["guide_wh"], outputs["guide_reg"] = outputs["wh"], outputs["reg"]
    _, terms = PGNetLoss(LossConfig(box="cdiou"), guidance=True)(outputs, targets)
    with torch.no_grad():
        giou, diou = reference_box_term(outputs, targets, "giou"), reference_box_term(outputs, targets, "diou")
    assert not torch.allclose(giou, diou, atol=1e-3)
    assert_close(terms["box"], giou)
    assert_close(terms["guide_box"], diou)


def test_offset_terms_match_a_plain_reference():
    outputs, targets = random_outputs(3), make_targets([1, 3, 0], seed=3)
    _, terms = PGNetLoss(LossConfig(), guidance=True)(outputs, targets)
    with torch.no_grad():
        reference = reference_l1_terms(outputs, targets)
    for name, value in reference.items():
        assert_close(terms[name], value, atol=1e-5, rtol=1e-5)


def test_heatmap_terms_are_focal_losses_with_the_crowd_weight():
    outputs, targets = random_outputs(2), make_targets([2, 1], seed=4)
    cfg = LossConfig(focal_alpha=1.5, focal_beta=3.0)
    _, terms = PGNetLoss(cfg, guidance=True)(outputs, targets)
    args = dict(weight=targets["hm_weight"], alpha=1.5, beta=3.0)
    with torch.no_grad():
        assert_close(terms["hm"], reference_focal(outputs["hm"], targets["hm"], **args).float())
        assert_close(terms["hm_hp"], reference_focal(outputs["hm_hp"], targets["hm_hp"], **args).float())
        assert_close(terms["guide_hm"], reference_focal(outputs["guide_hm"], targets["hm"], **args).float())


def test_total_is_the_weighted_sum_with_scaled_guidance_weights():
    cfg = LossConfig(hm_weight=1.5, box_weight=2.0, reg_weight=0.3, kps_weight=0.7, hm_hp_weight=1.1,
                     hp_offset_weight=0.9, guidance_weight=0.25)
    total, terms = PGNetLoss(cfg, guidance=True)(random_outputs(2), make_targets([1, 2]))
    expected = (1.5 * terms["hm"] + 2.0 * terms["box"] + 0.3 * terms["reg"] + 0.7 * terms["kps"]
                + 1.1 * terms["hm_hp"] + 0.9 * terms["hp_offset"]
                + 0.25 * 1.5 * terms["guide_hm"] + 0.25 * 2.0 * terms["guide_box"])
    assert_close(total.detach(), expected)
    assert not any(v.requires_grad for v in terms.values())


@pytest.mark.parametrize("variant", BOX_LOSS_VARIANTS)
def test_images_without_people_give_a_finite_loss(variant):
    outputs, targets = random_outputs(2), make_targets([0, 0])
    total, terms = PGNetLoss(LossConfig(box=variant), guidance=True)(outputs, targets)
    total.backward()
    for name in ("box", "reg", "kps", "hp_offset", "guide_box"):
        assert terms[name].item() == 0.0
    assert torch.isfinite(total) and terms["hm"].item() > 0
    assert all(torch.isfinite(o.grad).all() for o in outputs.values())


@pytest.mark.parametrize("variant", BOX_LOSS_VARIANTS)
def test_perfect_predictions_give_zero_regression_terms(variant):
    targets = make_targets([3, 0, 2], seed=5)
    _, terms = PGNetLoss(LossConfig(box=variant), guidance=True)(perfect_outputs(targets), targets)
    for name in ("box", "guide_box", "reg", "kps", "hp_offset"):
        assert terms[name].item() == pytest.approx(0.0, abs=1e-5), name
    # ... and a perturbed prediction does not.
    worse = perfect_outputs(targets)
    worse["wh"] = worse["wh"] * 1.3
    _, terms = PGNetLoss(LossConfig(box=variant), guidance=True)(worse, targets)
    assert terms["box"].item() > 1e-3


@pytest.mark.parametrize("guidance", [True, False])
@pytest.mark.parametrize("microbatches", [2, 4])
def test_batch_loss_equals_mean_of_microbatch_losses(microbatches, guidance):
    """DEVELOPERS.md's invariant: pipeline training with M micro-batches matches 1-process training."""
    criterion = PGNetLoss(LossConfig(box="cdiou"), guidance=guidance)
    targets = make_targets([2, 0, 3, 1], seed=6)  # unequal people per image: a batch-wide normaliser fails
    outputs = random_outputs(4, guidance, seed=6)
    total, terms = criterion(outputs, targets)
    total.backward()
    full_grads = {name: o.grad.clone() for name, o in outputs.items()}
    for o in outputs.values():
        o.grad = None

    size = 4 // microbatches
    micro_total, micro_terms = 0.0, {name: 0.0 for name in terms}
    for start in range(0, 4, size):
        part = slice(start, start + size)
        loss, parts = criterion({k: v[part] for k, v in outputs.items()}, {k: v[part] for k, v in targets.items()})
        (loss / microbatches).backward()  # as the pipeline schedules scale gradients
        micro_total = micro_total + loss.detach() / microbatches
        micro_terms = {name: micro_terms[name] + parts[name] / microbatches for name in parts}

    assert_close(micro_total, total.detach(), atol=1e-6, rtol=1e-6)
    for name in terms:
        assert_close(micro_terms[name], terms[name], atol=1e-6, rtol=1e-6)
    for name, o in outputs.items():
        assert_close(o.grad, full_grads[name], atol=1e-6, rtol=1e-6)


def test_unknown_variant_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="cdiou"):
        PGNetLoss(LossConfig(box="siou"), guidance=True)


def test_missing_guidance_outputs_are_explained():
    with pytest.raises(KeyError, match="guidance"):
        PGNetLoss(LossConfig(), guidance=True)(random_outputs(1, guidance=False), make_targets([1]))
    # The same outputs are fine for a loss without guidance.
    PGNetLoss(LossConfig(), guidance=False)(random_outputs(1, guidance=False), make_targets([1]))


def test_targets_for_another_output_size_are_refused():
    targets = make_targets([1])
    outputs = {k: v.detach()[..., :16, :16] for k, v in random_outputs(1).items()}
    with pytest.raises(ValueError, match="output size"):
        PGNetLoss(LossConfig(), guidance=True)(outputs, targets)
