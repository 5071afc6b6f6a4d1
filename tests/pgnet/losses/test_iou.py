"""Tests of pgnet.losses' IoU-family box losses: values and gradients against torchvision.ops, edge cases
(empty, degenerate, disjoint boxes), and the registry of box-loss variants."""
from __future__ import annotations

import pytest
import torch
import torchvision.ops as ops
from torch.testing import assert_close

from pgnet.errors import ConfigError
from pgnet.losses import BoxLoss, box_iou_loss, register_box_loss
from pgnet.registry import BOX_LOSSES
from tests.support.losses import BOX_LOSS_VARIANTS, EXPECTED_KINDS

KINDS = ("iou", "giou", "diou", "ciou")
TORCHVISION_LOSSES = {
    "giou": ops.generalized_box_iou_loss,
    "diou": ops.distance_box_iou_loss,
    "ciou": ops.complete_box_iou_loss,
}


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


def test_a_new_kind_is_one_registry_entry():
    register_box_loss("l1_test")(lambda p, t, eps: (p - t).abs().sum(-1))
    try:
        assert box_iou_loss(torch.ones(2, 4), torch.zeros(2, 4), "l1_test").item() == 4.0
        assert "l1_test" in BOX_LOSSES
    finally:
        BOX_LOSSES.unregister("l1_test")
    assert "l1_test" not in BOX_LOSSES


def test_the_registry_holds_the_papers_variants():
    assert BOX_LOSSES.names() == BOX_LOSS_VARIANTS


@pytest.mark.parametrize("variant", BOX_LOSS_VARIANTS)
def test_each_variant_supervises_its_heads_with_the_expected_kinds(variant):
    entry: BoxLoss = BOX_LOSSES.get(variant)
    main, guide = EXPECTED_KINDS[variant]
    assert (entry.main.__name__, entry.guide.__name__) == (f"{main}_loss", f"{guide}_loss")


def test_a_crossed_variant_is_not_a_per_box_loss():
    with pytest.raises(ValueError, match="crossed.*giou_loss.*diou_loss"):
        box_iou_loss(torch.ones(2, 4), torch.ones(2, 4), "cdiou")


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        BOX_LOSSES.get("eiou")
    assert "loss.box" in str(info.value) and all(v in str(info.value) for v in BOX_LOSS_VARIANTS)
