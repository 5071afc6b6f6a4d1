"""Tests of pgnet.losses.focal_loss against a plain reference: crowd weights, extreme logits,
per-image normalisation and empty batches."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from pgnet.losses import focal_loss
from tests.support.losses import draw_gaussian, reference_focal


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
