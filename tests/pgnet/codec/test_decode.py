"""Tests of pgnet.codec's decoding: snapping, rescoring, key-point refinement, the flip test and COCO results;
the round trip (ground truth -> targets -> perfect outputs -> decode) scores perfect AP with pycocotools."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from pgnet.codec import (
    coco_results,
    decode_outputs,
    detections_to_coco,
    flip_merge,
    oracle_outputs,
    peak_positions,
    to_image_coords,
)
from pgnet.codec.targets import NUM_JOINTS as J
from pgnet.config import AugmentConfig, EvalConfig
from pgnet.data import (
    collate_samples,
    load_coco_records,
    make_sample,
    write_synthetic_coco,
)
from pgnet.evaluation import evaluate
from tests.support.paths import COCO_SAMPLE_ANNOTATIONS, COCO_SAMPLE_IMAGES

MIRROR = AugmentConfig(scale=(1.0, 1.0), rotate=0.0, translate=0.0, flip=1.0, color=0.0)


def centernet(**settings) -> EvalConfig:
    """CenterNet's own decoding (no rescoring, the nearest peak, the box as it is, `hp_offset`), no score
    threshold: what these tests check the codec against, with `settings` changed."""
    base = dict(rescore=False, snap_score_weight=0.0, snap_box_margin=0.0, keypoint_refine="offset",
                score_threshold=0.0)
    return EvalConfig(**{**base, **settings})


def batch(records, input_size, augment=None, train=False):
    samples = [make_sample(r, input_size=input_size, max_people=32, augment=augment, seed=0, epoch=0,
                           train=train) for r in records]
    return collate_samples(samples)


@pytest.fixture(scope="module")
def sample_records():
    return load_coco_records(COCO_SAMPLE_ANNOTATIONS, COCO_SAMPLE_IMAGES)[0]


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    ann = write_synthetic_coco(root, "val", num_images=20, seed=3)
    return ann, load_coco_records(ann, root / "val")[0]


# 640 x 640 for the COCO sample: at 512 the face points of its smallest person (30 x 96 px) share
# output cells, and one `hp_offset` map cannot hold two offsets in one cell.
@pytest.mark.parametrize("rescore", [False, True])
@pytest.mark.parametrize("data,input_size", [("coco_sample", (640, 640)), ("synthetic", (512, 512))])
def test_round_trip_scores_perfect_ap(data, input_size, rescore, sample_records, synthetic_set):
    ann, records = (COCO_SAMPLE_ANNOTATIONS, sample_records) if data == "coco_sample" else synthetic_set
    _, targets, meta, num_bad = batch(records, input_size)
    assert num_bad == 0
    assert targets["mask"].sum() == sum(r.num_people for r in records)  # nobody lost by the letterbox
    results = coco_results(oracle_outputs(targets), meta["image_id"].tolist(), meta["inv_affine"],
                           centernet(top_k=32, rescore=rescore))
    metrics = evaluate(ann, results)
    assert metrics["keypoints/AP"] >= 0.99, metrics
    assert metrics["bbox/AP"] >= 0.99, metrics


def test_decoded_people_equal_the_targets(sample_records):
    _, targets, _, _ = batch(sample_records, (640, 640))
    detections = decode_outputs(oracle_outputs(targets), centernet(top_k=32))
    for i, det in enumerate(detections):
        n = int(targets["mask"][i].sum())
        assert (det["scores"][:n] > 0.99).all() and (det["scores"][n:] < 0.01).all()
        order = np.argsort(det["boxes"][:n, 0])
        truth = np.argsort(targets["box"][i, :n, 0].numpy())
        assert_close(torch.from_numpy(det["boxes"][:n][order]), targets["box"][i, :n][truth], atol=1e-4, rtol=0)
        centre = torch.stack([targets["ind"][i, :n] % 160, targets["ind"][i, :n] // 160], -1).float()
        want = (targets["kps"][i, :n].reshape(n, J, 2) + centre[:, None])[truth]
        labelled = (targets["hp_mask"][i, :n * J].reshape(n, J) > 0)[truth]
        # two key points in one output cell share one hp_offset: the snapped point is off by < 1 cell
        cells = targets["hp_ind"][i, :n * J].reshape(n, J)[truth]
        shared = torch.tensor([[(cells[labelled] == c).sum() > 1 for c in row] for row in cells]) & labelled
        got = torch.from_numpy(det["keypoints"][:n][order])
        exact = labelled & ~shared
        assert exact.sum() > 0.8 * labelled.sum()
        assert_close(got[..., :2][exact], want[exact], atol=1e-4, rtol=0)
        assert ((got[..., :2][shared] - want[shared]).abs() < 1).all()
        assert (got[..., 2][labelled] > 0.99).all()


def outputs_with_one_person(kp_peak=None, peak_score=0.9):
    """Outputs (32 x 32 map) of one person centred at (10, 12) with its nose regressed to (8, 6)."""
    h = w = 32
    out = {"hm": torch.full((1, 1, h, w), -9.0), "wh": torch.zeros(1, 2, h, w), "reg": torch.zeros(1, 2, h, w),
           "kps": torch.zeros(1, 2 * J, h, w), "hm_hp": torch.full((1, J, h, w), -9.0),
           "hp_offset": torch.zeros(1, 2, h, w)}
    out["hm"][0, 0, 12, 10] = 4.0
    out["wh"][0, :, 12, 10] = torch.tensor([10.0, 20.0])  # box (5, 2, 15, 22)
    out["reg"][0, :, 12, 10] = torch.tensor([0.0, 0.0])
    out["kps"][0, 0:2, 12, 10] = torch.tensor([-2.0, -6.0])  # nose regressed at (8, 6)
    if kp_peak is not None:
        x, y = kp_peak
        out["hm_hp"][0, 0, int(y), int(x)] = math.log(peak_score / (1 - peak_score))
        out["hp_offset"][0, :, int(y), int(x)] = torch.tensor([x % 1, y % 1])
    return out


@pytest.mark.parametrize("peak,snapped", [
    ((9.25, 7.5), True),  # inside the box, 1.6 px away (< 0.3 x 20)
    ((13.875, 6.0), True),  # 5.875 px away, just within the limit of 6
    ((16.5, 6.5), False),  # outside the box (x2 = 15)
    ((14.5, 14.5), False),  # inside the box but 10.6 px away
    (None, False),
])
def test_keypoints_snap_to_near_heatmap_peaks(peak, snapped):
    det = decode_outputs(outputs_with_one_person(peak), centernet(top_k=4))[0]
    assert_close(torch.from_numpy(det["boxes"][0]), torch.tensor([5.0, 2.0, 15.0, 22.0]))
    nose = det["keypoints"][0, 0]
    if snapped:
        assert_close(torch.from_numpy(nose), torch.tensor([peak[0], peak[1], 0.9]))
    else:  # the regressed point, with the key-point heatmap's (low) value there
        assert_close(torch.from_numpy(nose), torch.tensor([8.0, 6.0, torch.sigmoid(torch.tensor(-9.0)).item()]))


def test_rescoring_ranks_people_by_centre_times_mean_keypoint_confidence():
    out = outputs_with_one_person((9.25, 7.5), peak_score=0.9)  # centre logit 4, a nose peak of 0.9
    out["hm"][0, 0, 25, 25] = 6.0  # a second centre, stronger, whose key points are all unfound
    plain = decode_outputs(out, centernet(top_k=2))[0]
    rescored = decode_outputs(out, centernet(top_k=2, rescore=True))[0]
    low = 1 / (1 + math.exp(9.0))  # the key-point heatmaps' value away from peaks
    centre_a, centre_b = 1 / (1 + math.exp(-4.0)), 1 / (1 + math.exp(-6.0))
    assert_close(torch.from_numpy(plain["scores"]), torch.tensor([centre_b, centre_a]))
    want = [centre_a * (0.9 + (J - 1) * low) / J, centre_b * low]
    assert_close(torch.from_numpy(rescored["scores"]).double(), torch.tensor(want).double(), rtol=1e-5, atol=0)
    # boxes, key points and centre scores travel with their scores
    for key in ("boxes", "keypoints", "centre_scores"):
        assert_close(torch.from_numpy(rescored[key]), torch.from_numpy(plain[key][::-1].copy()))
    # the score threshold keeps whom the centre peak keeps: the second person's score is 1e-4, it stays
    assert len(detections_to_coco(rescored, image_id=1, score_threshold=0.05)) == 2
    assert len(detections_to_coco(rescored, image_id=1, score_threshold=0.99)) == 1


@pytest.mark.parametrize("weight, strong_at, want", [
    (0.0, (11.5, 6.5), (8.5, 6.5)),  # CenterNet: the nearest peak
    (1.0, (11.5, 6.5), (11.5, 6.5)),  # costs 0.707/20 - 0.2 = -0.165 (weak) vs 3.536/20 - 0.9 = -0.723 (strong)
    (0.1, (11.5, 6.5), (8.5, 6.5)),  # 0.0154 (weak) vs 0.0868 (strong)
    (1.0, (8.0, 13.5), (8.5, 6.5)),  # the strong peak is 7.5 away, beyond 0.3 x 20: never a candidate
    (1.0, (8.5, 1.5), (8.5, 6.5)),  # 4.5 away but above the box (y1 = 2): never a candidate
])
def test_snapping_weighs_a_peaks_score_against_its_distance(weight, strong_at, want):
    out = outputs_with_one_person((8.5, 6.5), peak_score=0.2)  # regressed nose at (8, 6), box (5, 2, 15, 22)
    x, y = strong_at
    out["hm_hp"][0, 0, int(y), int(x)] = math.log(0.9 / 0.1)
    out["hp_offset"][0, :, int(y), int(x)] = torch.tensor([x % 1, y % 1])
    nose = decode_outputs(out, centernet(top_k=4, snap_score_weight=weight))[0]["keypoints"][0, 0]
    assert_close(torch.from_numpy(nose[:2]), torch.tensor(want))


@pytest.mark.parametrize("margin, peak, snapped", [
    (0.0, (4.25, 6.0), False),  # x1 = 5: outside CenterNet's box
    (0.25, (4.25, 6.0), True),  # the box widened by 0.25 x 10 = 2.5 on each side: x1 = 2.5
    (0.0, (8.5, 0.5), False),  # y1 = 2
    (0.25, (8.5, 0.5), True),  # ... and by 0.25 x 20 = 5 above and below: y1 = -3
    (0.25, (2.25, 6.0), False),  # 5.75 from (8, 6), within 0.3 x 20, but left of the widened box (x1 = 2.5)
    (0.25, (13.875, 6.0), True),  # inside either box, as without a margin
])
def test_snapping_box_margin_widens_the_box_not_the_distance_limit(margin, peak, snapped):
    det = decode_outputs(outputs_with_one_person(peak), centernet(top_k=4, snap_box_margin=margin))[0]
    assert_close(torch.from_numpy(det["boxes"][0]), torch.tensor([5.0, 2.0, 15.0, 22.0]))  # the box is unchanged
    want = [peak[0], peak[1]] if snapped else [8.0, 6.0]
    assert_close(torch.from_numpy(det["keypoints"][0, 0, :2]), torch.tensor(want))


def test_weak_peaks_are_not_snapped():
    det = decode_outputs(outputs_with_one_person((9.25, 7.5), peak_score=0.05), centernet())[0]
    assert_close(torch.from_numpy(det["keypoints"][0, 0, :2]), torch.tensor([8.0, 6.0]))


def centroid_by_loops(scores: np.ndarray, x: int, y: int) -> tuple[float, float]:
    """The score-squared weighted mean of the 3 x 3 cell centres around (x, y), cell by cell."""
    h, w = scores.shape
    total = sx = sy = 0.0
    for yy in range(y - 1, y + 2):
        for xx in range(x - 1, x + 2):
            if 0 <= yy < h and 0 <= xx < w:
                weight = float(scores[yy, xx]) ** 2
                total, sx, sy = total + weight, sx + weight * (xx + 0.5), sy + weight * (yy + 0.5)
    return sx / total, sy / total


def test_centroid_refinement_equals_a_cell_by_cell_computation():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(2, 3, 7, 9, generator=gen, dtype=torch.float64)
    cells = [(0, 0), (8, 6), (4, 3), (8, 0), (0, 5), (5, 6)]  # corners, edges and the inside
    inds = torch.tensor([y * 9 + x for x, y in cells]).expand(2, 3, len(cells))
    got = peak_positions(scores, torch.zeros(2, 2, 7, 9), inds, "centroid")
    for b in range(2):
        for j in range(3):
            for p, (x, y) in enumerate(cells):
                assert_close(tuple(got[b, j, p].tolist()), centroid_by_loops(scores[b, j].numpy(), x, y))


def test_offset_refinement_reads_the_offset_head_at_the_peak():
    offsets = torch.zeros(1, 2, 4, 5)
    offsets[0, :, 2, 3] = torch.tensor([0.25, 0.75])
    got = peak_positions(torch.rand(1, 1, 4, 5), offsets, torch.tensor([[[2 * 5 + 3, 0]]]), "offset")
    assert_close(got, torch.tensor([[[[3.25, 2.75], [0.0, 0.0]]]]))


@pytest.mark.parametrize("left, right, want_x", [
    (0.5, 0.5, 4.5),  # symmetric: the peak cell's centre
    (0.0, 0.9, 4.5 + 0.81 / (1 + 0.81)),  # pulled towards the strong right neighbour
    (0.9, 0.3, 4.5 + (0.09 - 0.81) / (1 + 0.81 + 0.09)),
])
def test_centroid_refinement_moves_towards_the_stronger_neighbour(left, right, want_x):
    scores = torch.zeros(1, 1, 5, 9, dtype=torch.float64)
    scores[0, 0, 2, 3:6] = torch.tensor([left, 1.0, right], dtype=torch.float64)
    got = peak_positions(scores, torch.zeros(1, 2, 5, 9), torch.tensor([[[2 * 9 + 4]]]), "centroid")
    assert_close(got[0, 0, 0], torch.tensor([want_x, 2.5], dtype=torch.float64))


def test_decoding_with_centroid_refinement_places_the_snapped_peak_by_the_heatmap():
    out = outputs_with_one_person((9.25, 7.5))  # nose peak in cell (9, 7), hp_offset (0.25, 0.5) there
    out["hm_hp"][0, 0, 7, 10] = math.log(0.6 / 0.4)  # a neighbour to the right
    centroid = decode_outputs(out, centernet(top_k=4, keypoint_refine="centroid"))[0]["keypoints"][0, 0]
    offset = decode_outputs(out, centernet(top_k=4))[0]["keypoints"][0, 0]
    assert_close(torch.from_numpy(offset[:2]), torch.tensor([9.25, 7.5]))
    want = centroid_by_loops(torch.sigmoid(out["hm_hp"][0, 0]).numpy(), 9, 7)
    assert_close(tuple(float(v) for v in centroid[:2]), want)
    assert 9.5 + 0.3 < want[0] < 10 and centroid[2] == offset[2]  # same peak, same confidence


def test_an_unknown_refinement_is_refused():
    with pytest.raises(ValueError, match="keypoint_refine='dark' is not one of offset, centroid"):
        decode_outputs(outputs_with_one_person((9.25, 7.5)), centernet(keypoint_refine="dark"))


def test_decoding_without_settings_is_the_evaluations_decoding():
    """A caller that bypasses `predict_coco` gets `EvalConfig`'s decoding, not another set of defaults."""
    out = outputs_with_one_person((9.25, 7.5))
    default, configured = decode_outputs(out)[0], decode_outputs(out, EvalConfig())[0]
    for key in default:
        np.testing.assert_array_equal(default[key], configured[key])
    assert not np.array_equal(default["scores"], decode_outputs(out, centernet())[0]["scores"])  # rescored


@pytest.mark.parametrize("angle", [0.0, 30.0])
def test_to_image_coords_maps_points_and_box_corners(angle):
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    inv = np.array([[2 * c, -2 * s, 5.0], [2 * s, 2 * c, -3.0]])
    det = {"boxes": np.array([[1.0, 2.0, 3.0, 6.0]]), "scores": np.array([0.8]),
           "keypoints": np.array([[[1.5, 2.5, 0.7]] * J])}
    out = to_image_coords(det, inv, stride=4)
    corners = np.array([[4, 8], [12, 8], [4, 24], [12, 24]], float) @ inv[:, :2].T + inv[:, 2]
    assert_close(torch.from_numpy(out["boxes"][0]).double(),
                 torch.from_numpy(np.r_[corners.min(0), corners.max(0)]), atol=1e-5, rtol=0)
    point = np.array([6.0, 10.0]) @ inv[:, :2].T + inv[:, 2]
    assert_close(torch.from_numpy(out["keypoints"][0, 3]).double(), torch.tensor([*point, 0.7]).double(),
                 atol=1e-5, rtol=0)
    assert out["scores"][0] == 0.8


def test_flip_merge_of_an_image_and_its_mirror_finds_the_same_people(sample_records):
    images, targets, _, _ = batch(sample_records, (640, 640))
    mirrored_images, mirrored_targets, meta, _ = batch(sample_records, (640, 640), augment=MIRROR, train=True)
    assert meta["flipped"].all()
    assert_close(mirrored_images, images.flip(-1))  # the mirrored sample is the mirror image
    outputs = oracle_outputs(targets)
    plain = decode_outputs(outputs, centernet())
    merged = decode_outputs(flip_merge(outputs, oracle_outputs(mirrored_targets)), centernet())
    for i, (a, b) in enumerate(zip(plain, merged)):
        n = int(targets["mask"][i].sum())
        assert_close(torch.from_numpy(b["scores"][:n]), torch.from_numpy(a["scores"][:n]), atol=1e-4, rtol=0)
        oa, ob = np.argsort(a["boxes"][:n, 0]), np.argsort(b["boxes"][:n, 0])
        assert_close(torch.from_numpy(b["boxes"][:n][ob]), torch.from_numpy(a["boxes"][:n][oa]), atol=1e-4, rtol=0)
        truth = np.argsort(targets["box"][i, :n, 0].numpy())
        labelled = (targets["kps_mask"][i, :n].reshape(n, J, 2)[..., 0] > 0)[truth].numpy()
        kb, ka = b["keypoints"][:n][ob][labelled], a["keypoints"][:n][oa][labelled]
        assert_close(torch.from_numpy(kb[:, :2]), torch.from_numpy(ka[:, :2]), atol=1e-4, rtol=0)
        # a key point on a cell border (integer x) lands one cell over in the mirror (W - x): its
        # averaged peak is lower there; everywhere else the confidences agree
        border = ka[:, 0] == np.floor(ka[:, 0])
        assert_close(torch.from_numpy(kb[~border, 2]), torch.from_numpy(ka[~border, 2]), atol=1e-4, rtol=0)
        assert (kb[border, 2] > 0.5).all()


def test_flip_merge_swaps_left_and_right_heatmaps():
    outputs = {name: torch.zeros(1, c, 4, 6) for name, c in
               (("hm", 1), ("wh", 2), ("reg", 2), ("kps", 2 * J), ("hm_hp", J), ("hp_offset", 2))}
    mirrored = {k: v.clone() for k, v in outputs.items()}
    mirrored["hm_hp"][0, 9, 1, 0] = 6.0  # the mirror's left wrist at cell x=0 is our right wrist at x=5
    mirrored["kps"][0, 18:20, 1, 0] = torch.tensor([0.25, -3.0])  # left wrist offset in the mirror
    merged = flip_merge(outputs, mirrored)
    p = torch.sigmoid(merged["hm_hp"])
    assert_close(p[0, 10, 1, 5], (torch.sigmoid(torch.tensor(6.0)) + 0.5) / 2)
    assert_close(p[0, 9, 1, 5], torch.tensor(0.5))
    # our right wrist (channels 20, 21) at x=5: dx = 1 - 0.25 (mirror of a cell-corner offset), dy kept
    assert_close(merged["kps"][0, 20:22, 1, 5], torch.tensor([0.75, -3.0]) / 2)


def test_detections_to_coco_keeps_confident_people():
    det = {"boxes": np.array([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 1.0, 1.0]], np.float32),
           "scores": np.array([0.9, 0.01], np.float32),
           "keypoints": np.tile(np.array([15.0, 25.0, 0.5], np.float32), (2, J, 1))}
    results = detections_to_coco(det, image_id=7, score_threshold=0.05)
    assert len(results) == 1
    assert results[0]["bbox"] == [10.0, 20.0, 20.0, 40.0] and results[0]["image_id"] == 7
    assert results[0]["keypoints"][:3] == [15.0, 25.0, 0.5] and len(results[0]["keypoints"]) == 3 * J
    assert detections_to_coco(det, image_id=7, score_threshold=0.95) == []
    nobody = to_image_coords({"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "keypoints": np.zeros((0, J, 3))},
                             np.eye(2, 3))
    assert nobody["boxes"].shape == (0, 4) and detections_to_coco(nobody, image_id=7) == []
