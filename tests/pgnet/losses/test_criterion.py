"""Tests of PGNetLoss: its terms against plain references, the weights of the total, the crossed CDIoU
scheme and micro-batch invariance."""
from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from pgnet.config import LossConfig
from pgnet.losses import PGNetLoss, box_iou_loss
from tests.support.losses import (
    BOX_LOSS_VARIANTS,
    EXPECTED_KINDS,
    draw_gaussian,
    reference_focal,
)

J = 17

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
