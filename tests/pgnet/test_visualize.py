"""Tests of pgnet.visualize: drawn people land where the people are, grids and loss plots are real PNGs.

Drawing is checked on the real COCO sample images with their ground-truth annotations.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from pgnet.data.skeleton import KEYPOINT_NAMES
from pgnet.visualize import (
    SIDE_COLORS,
    draw_people,
    loss_curves_figure,
    plot_loss_curves,
    predictions_grid,
)
from tests.support.paths import COCO_SAMPLE_ANNOTATIONS, COCO_SAMPLE_IMAGES

MARGIN = 30  # px around a box that a score label, a key-point dot or a line end may reach


@pytest.fixture(scope="module")
def sample() -> list[tuple[Image.Image, list[dict]]]:
    """(image, ground-truth people) for the four sample images."""
    gt = json.loads(COCO_SAMPLE_ANNOTATIONS.read_text())
    pairs = []
    for info in gt["images"]:
        image = Image.open(COCO_SAMPLE_IMAGES / info["file_name"]).convert("RGB")
        people = [a for a in gt["annotations"] if a["image_id"] == info["id"]]
        pairs.append((image, people))
    return pairs


def as_results(people: list[dict], score: float) -> list[dict]:
    return [{"image_id": p["image_id"], "category_id": 1, "score": score, "bbox": p["bbox"],
             "keypoints": p["keypoints"]} for p in people]


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    return np.any(np.asarray(before) != np.asarray(after), axis=2)


def near_people(people: list[dict], shape: tuple[int, int]) -> np.ndarray:
    inside = np.zeros(shape, dtype=bool)
    for p in people:
        x, y, w, h = p["bbox"]
        inside[max(0, int(y) - MARGIN): int(y + h) + MARGIN, max(0, int(x) - MARGIN): int(x + w) + MARGIN] = True
    return inside


@pytest.mark.parametrize("index", range(4))
def test_drawing_changes_the_image_where_people_are_only(sample, index):
    image, people = sample[index]
    original = image.copy()
    drawn = draw_people(image, people)
    assert drawn.size == image.size and drawn.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(original))  # the input is left alone
    diff = changed(image, drawn)
    assert not np.any(diff & ~near_people(people, diff.shape)), "pixels changed away from every person"
    for person in people:  # every person's box outline was drawn
        assert diff[near_people([person], diff.shape)].sum() > 100


@pytest.mark.parametrize(
    ("score", "score_threshold", "kp_threshold", "expect"),
    [
        (0.9, 0.3, 0.2, "everything"),
        (0.2, 0.3, 0.2, "nothing"),  # below the person threshold
        (0.9, 0.3, 5.0, "boxes"),  # no key point reaches the threshold
    ],
)
def test_thresholds_decide_what_is_drawn(sample, score, score_threshold, kp_threshold, expect):
    image, people = sample[3]
    results = as_results(people, score)
    drawn = changed(image, draw_people(image, results, score_threshold, kp_threshold)).sum()
    boxes_only = changed(image, draw_people(image, [{k: v for k, v in r.items() if k != "keypoints"}
                                                   for r in results])).sum()
    if expect == "nothing":
        assert drawn == 0
    elif expect == "boxes":
        assert drawn == boxes_only
    else:
        assert drawn > boxes_only > 0


@pytest.mark.parametrize(
    ("a", "b", "side"),
    [("left_shoulder", "left_elbow", "left"), ("right_hip", "right_knee", "right"),
     ("left_shoulder", "right_shoulder", "centre")],
)
def test_limbs_are_coloured_by_side(a, b, side):
    ia, ib = KEYPOINT_NAMES.index(a), KEYPOINT_NAMES.index(b)
    kps = np.zeros((17, 3))
    kps[ia] = (20, 100, 1.0)
    kps[ib] = (180, 100, 1.0)
    image = Image.new("RGB", (200, 200), (0, 0, 0))
    drawn = np.asarray(draw_people(image, [{"score": 1.0, "keypoints": kps.ravel().tolist()}]))
    assert tuple(drawn[100, 100]) == SIDE_COLORS[side]  # the middle of the limb
    assert drawn[150:, :].max() == 0  # nothing else drawn


def test_bad_keypoints_are_refused(sample):
    image, _ = sample[0]
    with pytest.raises(ValueError, match="51 numbers"):
        draw_people(image, [{"score": 1.0, "keypoints": [1.0] * 34}])


@pytest.mark.parametrize(("cols", "grid_shape"), [(2, (2, 2)), (3, (3, 2)), (8, (4, 1))])
def test_predictions_grid_writes_a_png(sample, tmp_path, cols, grid_shape):
    path = predictions_grid(sample, tmp_path / "out" / "grid.png", cols=cols, tile_size=160)
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == (160 * grid_shape[0], 160 * grid_shape[1])
        pixels = np.asarray(png.convert("RGB"))
    assert path.stat().st_size > 10_000
    assert pixels.std() > 20  # pictures, not an empty canvas
    with pytest.raises(ValueError, match="at least one"):
        predictions_grid([], tmp_path / "empty.png")


def loss_records(n: int = 40) -> list[dict]:
    return [{"step": 10 * i, "loss": 3 * math.exp(-i / 10) + 0.1, "loss/hm": 2 * math.exp(-i / 8) + 0.05,
             "loss/kps": math.exp(-i / 15) + 0.02, "lr": 1e-3} for i in range(n)]


@pytest.mark.parametrize("with_lr", [True, False])
def test_plot_loss_curves_writes_a_png(tmp_path, with_lr):
    records = loss_records()
    if not with_lr:
        records = [{k: v for k, v in r.items() if k != "lr"} for r in records]
    path = plot_loss_curves(records, tmp_path / "loss.png")
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == ((800, 650) if with_lr else (800, 450))
        colours = len(np.unique(np.asarray(png.convert("RGB")).reshape(-1, 3), axis=0))
    assert path.stat().st_size > 10_000 and colours > 50


def test_every_loss_key_is_a_curve_on_a_log_axis():
    records = loss_records()
    records[5]["loss/hm"] = float("nan")  # a non-finite value is left out
    records.append({"step": 400, "keypoints/AP": 0.3})  # an evaluation record: not a loss
    ax = loss_curves_figure(records).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"loss", "loss/hm", "loss/kps"}
    assert ax.get_yscale() == "log"
    assert len(lines["loss/hm"].get_xdata()) == len(records) - 2
    np.testing.assert_array_equal(lines["loss"].get_xdata(), [r["step"] for r in records if "loss" in r])


def test_non_positive_losses_use_a_linear_axis_and_no_losses_is_an_error():
    records = [{"step": i, "loss": 1.0 - i} for i in range(3)]
    assert loss_curves_figure(records).axes[0].get_yscale() == "linear"
    with pytest.raises(ValueError, match="no key starting with 'loss'"):
        loss_curves_figure([{"step": 1, "keypoints/AP": 0.5}])
