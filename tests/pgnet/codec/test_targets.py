"""Tests of pgnet.codec's encoding: Gaussian peaks against hand-computed values, and training targets that
follow the contract (shapes, one person by hand, crowds, dropped people, zero loss for oracle outputs)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from pgnet.codec import (
    TARGET_KEYS,
    draw_gaussian,
    encode_targets,
    gaussian_2d,
    gaussian_radius,
    heatmap_radius,
    oracle_outputs,
)
from pgnet.codec.targets import NUM_JOINTS as J
from pgnet.config import LossConfig
from pgnet.losses.criterion import PGNetLoss

# ---------------------------------------------------------------- Gaussian peaks

@pytest.mark.parametrize("radius", [0, 1, 2, 5, 9])
def test_gaussian_2d_is_the_sampled_gaussian(radius):
    sigma = (2 * radius + 1) / 6
    ref = np.array([[math.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))
                     for dx in range(-radius, radius + 1)] for dy in range(-radius, radius + 1)])
    assert_close(torch.from_numpy(gaussian_2d(radius).copy()), torch.from_numpy(ref), rtol=0, atol=1e-15)
    assert not gaussian_2d(radius).flags.writeable  # cached and shared: nobody may change it
    assert gaussian_2d(radius)[radius, radius] == 1.0


@pytest.mark.parametrize("center", [(0, 0), (11, 7), (3, 5), (11, 0), (6, 3)])
@pytest.mark.parametrize("radius", [0, 2, 4])
def test_draw_gaussian_cuts_at_borders_and_keeps_the_max(center, radius):
    h, w = 8, 12
    base = np.random.default_rng(0).uniform(0, 0.6, (h, w)).astype(np.float32)
    out = draw_gaussian(base.copy(), center, radius)
    sigma = (2 * radius + 1) / 6
    ref = base.copy()
    for y in range(h):  # independent reference: evaluate the peak at every pixel in reach
        for x in range(w):
            dx, dy = x - center[0], y - center[1]
            if abs(dx) <= radius and abs(dy) <= radius:
                ref[y, x] = max(ref[y, x], math.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)))
    assert_close(torch.from_numpy(out), torch.from_numpy(ref), rtol=0, atol=1e-6)
    assert out[center[1], center[0]] == 1.0


def test_gaussian_radius_scales_with_the_object():
    # every root of CornerNet's quadratics is homogeneous of degree 1 in (h, w)
    for h, w in [(10, 20), (3, 3), (50, 17)]:
        assert gaussian_radius(4 * h, 4 * w) == pytest.approx(4 * gaussian_radius(h, w))
    assert gaussian_radius(20, 20, min_overlap=0.5) > gaussian_radius(20, 20, min_overlap=0.9)
    # 10 x 10 at overlap 0.7: CenterNet's third root (b3 = -28, 4 a3 c3 = -16*0.7*0.3*100) is the smallest
    assert gaussian_radius(10, 10) == pytest.approx((-28 + math.sqrt(28 ** 2 + 16 * 0.7 * 0.3 * 100)) / 2)
    assert heatmap_radius(1.0, 1.0) == 0 and heatmap_radius(40, 40) > heatmap_radius(10, 10)


# ---------------------------------------------------------------- encoding

def one_person(box, points: dict[int, tuple[float, float]]):
    kps = np.zeros((1, J, 3), np.float32)
    for j, (x, y) in points.items():
        kps[0, j] = (x, y, 2)
    return np.asarray([box], np.float32), kps


@pytest.mark.parametrize("input_size", [(128, 128), (256, 192), (64, 96)])
def test_targets_follow_the_contract(input_size):
    boxes, kps = one_person([10, 12, 50, 60], {0: (20, 20), 5: (30, 40)})
    t = encode_targets(boxes, kps, np.zeros((0, 4)), input_size, max_people=5)
    h, w = input_size[0] // 4, input_size[1] // 4
    shapes = {"hm": (1, h, w), "hm_hp": (J, h, w), "hm_weight": (1, h, w), "ind": (5,), "mask": (5,),
              "box": (5, 4), "reg": (5, 2), "kps": (5, 2 * J), "kps_mask": (5, 2 * J), "hp_ind": (5 * J,),
              "hp_offset": (5 * J, 2), "hp_mask": (5 * J,)}
    assert set(t) == set(TARGET_KEYS) == set(shapes)
    for key, shape in shapes.items():
        assert t[key].shape == shape, key
        assert t[key].dtype == (np.int64 if key in ("ind", "hp_ind") else np.float32), key


def test_encoding_of_one_person_by_hand():
    # input px -> output px (/4): box (10.25, 20.5, 26.75, 50.75), centre (18.5, 35.625)
    boxes, kps = one_person([41, 82, 107, 203], {0: (50, 90), 9: (-8, 100), 15: (420, 100)})
    kps[0, 3] = (60, 100, 0)  # unlabelled
    t = encode_targets(boxes, kps, np.zeros((0, 4)), (256, 256), max_people=4)
    w = 64
    assert t["mask"].tolist() == [1, 0, 0, 0]
    assert t["ind"][0] == 35 * w + 18
    assert_close(torch.from_numpy(t["box"][0]), torch.tensor([10.25, 20.5, 26.75, 50.75]))
    assert_close(torch.from_numpy(t["reg"][0]), torch.tensor([0.5, 0.625]))
    assert t["hm"][0, 35, 18] == 1.0 and t["hm"].max() == 1.0
    # nose (50, 90) -> (12.5, 22.5): offset from the integer centre (18, 35)
    assert_close(torch.from_numpy(t["kps"][0, 0:2]), torch.tensor([-5.5, -12.5]))
    assert t["kps_mask"][0].tolist() == [1, 1] + [0] * 32  # outside (-8, 420) and unlabelled masked
    assert t["hp_mask"][:J].tolist() == [1] + [0] * 16
    assert t["hp_ind"][0] == 22 * w + 12
    assert_close(torch.from_numpy(t["hp_offset"][0]), torch.tensor([0.5, 0.5]))
    assert t["hm_hp"][0, 22, 12] == 1.0
    assert t["hm_hp"][1:].max() == 0  # no peaks for masked key points
    radius = heatmap_radius(50.75 - 20.5, 26.75 - 10.25)
    assert np.count_nonzero(t["hm"][0]) == np.count_nonzero(gaussian_2d(radius))
    assert (t["hm_weight"] == 1).all()


def test_largest_people_keep_the_slots():
    boxes = np.array([[0, 0, 20, 20], [40, 40, 120, 120], [200, 10, 240, 90]], np.float32)
    kps = np.zeros((3, J, 3), np.float32)
    t = encode_targets(boxes, kps, np.zeros((0, 4)), (256, 256), max_people=2)
    assert t["mask"].tolist() == [1, 1]
    assert_close(torch.from_numpy(t["box"]), torch.from_numpy(boxes[[1, 2]] / 4))
    # the dropped (smallest) person is still a heatmap positive, not background
    assert t["hm"][0, 2, 2] == 1.0 and (t["hm"] == 1).sum() == 3


def test_people_outside_the_map_are_dropped():
    boxes = np.array([[300, 10, 340, 60], [20, 20, 60, 90], [-50, -50, -10, -5]], np.float32)
    kps = np.zeros((3, J, 3), np.float32)
    kps[0, 0] = (320, 30, 2)
    t = encode_targets(boxes, kps, np.zeros((0, 4)), (128, 256), max_people=4)
    assert t["mask"].tolist() == [1, 0, 0, 0]
    assert_close(torch.from_numpy(t["box"][0]), torch.tensor([5.0, 5.0, 15.0, 22.5]))
    assert (t["hm"] == 1).sum() == 1 and t["hp_mask"].sum() == 0


def test_crowd_regions_are_ignored_not_positives():
    boxes, kps = one_person([10, 10, 50, 70], {0: (20, 20)})
    crowd = np.array([[120, 40, 201, 101]], np.float32)  # output (30, 10, 50.25, 25.25)
    t = encode_targets(boxes, kps, crowd, (128, 256), max_people=4)
    weight = t["hm_weight"][0]
    expected = np.ones_like(weight)
    expected[10:26, 30:51] = 0  # every cell the box touches
    assert_close(torch.from_numpy(weight), torch.from_numpy(expected))
    assert t["hm"][0, 10:26, 30:51].max() == 0 and t["mask"].sum() == 1


def test_people_without_keypoints_get_box_targets_only():
    boxes = np.array([[10, 10, 50, 70]], np.float32)
    t = encode_targets(boxes, np.zeros((1, J, 3)), np.zeros((0, 4)), (128, 128), max_people=4)
    assert t["mask"][0] == 1 and t["hm"].max() == 1
    assert t["kps_mask"].sum() == 0 and t["hp_mask"].sum() == 0 and t["hm_hp"].max() == 0


@pytest.mark.parametrize("crowd", [np.zeros((0, 4)), np.array([[8.0, 8.0, 40.0, 24.0]])])
def test_an_image_without_people_has_empty_targets(crowd):
    t = encode_targets(np.zeros((0, 4)), np.zeros((0, J, 3)), crowd, (64, 64), max_people=3)
    assert t["mask"].sum() == 0 and t["hm"].max() == 0 and t["hm_hp"].max() == 0 and t["hp_mask"].sum() == 0
    assert (t["hm_weight"] == 0).sum() == (0 if len(crowd) == 0 else 8 * 4)


def test_mismatched_keypoints_are_rejected():
    with pytest.raises(ValueError, match=r"keypoints must be \(2, 17, 3\)"):
        encode_targets(np.zeros((2, 4)), np.zeros((1, J, 3)), np.zeros((0, 4)), (64, 64), max_people=3)


def test_oracle_outputs_have_zero_regression_loss():
    """The targets meet the loss's contract: perfect outputs give zero box/offset losses."""
    boxes, kps = one_person([41, 82, 107, 203], {0: (50, 90), 5: (70, 120)})
    t = encode_targets(boxes, kps, np.zeros((0, 4)), (256, 256), max_people=4)
    targets = {k: torch.from_numpy(v).unsqueeze(0) for k, v in t.items()}
    terms = PGNetLoss(LossConfig(box="giou"), guidance=False).terms(oracle_outputs(targets), targets)
    for name in ("box", "reg", "kps", "hp_offset"):
        assert terms[name].abs().item() < 1e-5, name
