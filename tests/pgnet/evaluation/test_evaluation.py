"""Tests of pgnet.evaluation: results validation and COCOeval metrics by name.

Every metric is checked against pycocotools' COCOeval called directly on the same data (the reference).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pgnet.evaluation import (
    STAT_NAMES,
    evaluate,
    format_metrics_table,
    load_ground_truth,
    load_results,
    metric_names,
    results_from_detections,
    write_metrics_json,
)
from tests.support.paths import COCO_SAMPLE

ANNOTATIONS = COCO_SAMPLE / "annotations"
GT_FILE = ANNOTATIONS / "person_keypoints_val2017.json"
KEYPOINT_RESULTS = ANNOTATIONS / "example_keypoint_results.json"
DETECTION_RESULTS = ANNOTATIONS / "person_detection_results.json"


@pytest.fixture(scope="module")
def gt_json() -> dict:
    assert GT_FILE.is_file(), f"the shared COCO sample is missing: {GT_FILE}"
    return json.loads(GT_FILE.read_text())


@pytest.fixture(scope="module")
def coco_gt() -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(GT_FILE))


def reference_stats(dets, iou_type: str, img_ids=None) -> torch.Tensor:
    """COCOeval run directly, as pycocotools' own example does (person category only)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(GT_FILE))
        dt = gt.loadRes(str(dets) if isinstance(dets, Path) else copy.deepcopy(dets))
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.params.catIds = [1]
        if img_ids is not None:
            evaluator.params.imgIds = img_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return torch.tensor(evaluator.stats, dtype=torch.float64)


def ours(metrics: dict[str, float], iou_type: str) -> torch.Tensor:
    return torch.tensor([metrics[f"{iou_type}/{n}"] for n in STAT_NAMES[iou_type]], dtype=torch.float64)


def gt_as_results(gt_json: dict, shift: float = 0.0) -> list[dict]:
    """Perfect detections: every GT box, and the GT key points (shifted right by `shift` px) of people with any."""
    results = []
    for ann in gt_json["annotations"]:
        result = {"image_id": ann["image_id"], "category_id": 1, "score": 1.0, "bbox": list(ann["bbox"])}
        if ann["num_keypoints"] > 0:
            kps = np.asarray(ann["keypoints"], dtype=np.float64).reshape(17, 3)
            kps[:, 0] += shift
            kps[:, 2] = kps[:, 2] > 0  # visibility flag -> key-point score
            result["keypoints"] = kps.ravel().tolist()
        results.append(result)
    return results


def keypoints_only(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "bbox"} for r in results if "keypoints" in r]


def test_ground_truth_as_results_is_perfect_and_matches_cocoeval(gt_json):
    results = gt_as_results(gt_json)
    metrics = evaluate(GT_FILE, results)
    assert list(metrics) == metric_names(("keypoints", "bbox"))
    assert metrics["keypoints/AP"] == 1.0
    assert metrics["bbox/AP"] == 1.0
    torch.testing.assert_close(ours(metrics, "keypoints"), reference_stats(keypoints_only(results), "keypoints"))
    torch.testing.assert_close(ours(metrics, "bbox"), reference_stats(results, "bbox"))


@pytest.mark.parametrize(
    ("results_file", "present", "absent"),
    [(KEYPOINT_RESULTS, "keypoints", "bbox"), (DETECTION_RESULTS, "bbox", "keypoints")],
    ids=["keypoint-results", "detection-results"],
)
def test_results_file_matches_cocoeval_and_skips_missing_type(results_file, present, absent, caplog):
    caplog.set_level("INFO", logger="pgnet.evaluation.coco_eval")
    metrics = evaluate(GT_FILE, results_file)
    assert set(metrics) == set(metric_names([present]))
    assert not any(k.startswith(absent + "/") for k in metrics)
    assert f"{absent} metrics skipped" in caplog.text
    torch.testing.assert_close(ours(metrics, present), reference_stats(results_file, present))
    assert 0.3 < metrics[f"{present}/AP"] < 1.0  # real detections: neither trivial nor perfect


def test_gt_object_and_path_give_the_same_metrics(coco_gt):
    assert evaluate(coco_gt, KEYPOINT_RESULTS) == evaluate(str(GT_FILE), KEYPOINT_RESULTS)


def test_keypoint_results_carrying_boxes_keep_keypoint_area():
    """loadRes would take the area from a bbox; key-point metrics must not depend on the boxes."""
    plain = json.loads(KEYPOINT_RESULTS.read_text())
    with_boxes = []
    for r in plain:
        kps = np.asarray(r["keypoints"]).reshape(17, 3)
        (x0, y0), (x1, y1) = kps[:, :2].min(0), kps[:, :2].max(0)
        w, h = x1 - x0, y1 - y0
        with_boxes.append({**r, "bbox": [x0 - w, y0 - h, 3 * w, 3 * h]})  # boxes 9x the key-point extent
    metrics = evaluate(GT_FILE, with_boxes)
    torch.testing.assert_close(ours(metrics, "keypoints"), reference_stats(plain, "keypoints"))
    # The naive path (loadRes on the dicts with boxes) moves detections between size ranges:
    # the check above would catch an evaluator that passed the boxes through.
    assert not torch.equal(reference_stats(with_boxes, "keypoints"), reference_stats(plain, "keypoints"))
    assert "bbox/AP" in metrics


def test_perturbed_keypoints_lower_ap_as_cocoeval_says(gt_json):
    aps = []
    for shift in (0.0, 2.0, 4.0, 8.0, 16.0):
        results = keypoints_only(gt_as_results(gt_json, shift))
        metrics = evaluate(GT_FILE, results, iou_types=("keypoints",))
        torch.testing.assert_close(ours(metrics, "keypoints"), reference_stats(results, "keypoints"))
        aps.append(metrics["keypoints/AP"])
    assert aps[0] == 1.0
    assert all(a > b for a, b in zip(aps, aps[1:])), aps


@pytest.mark.parametrize("as_file", [False, True], ids=["list", "file"])
def test_empty_results_score_zero(as_file, tmp_path):
    results = []
    if as_file:
        results = tmp_path / "empty.json"
        results.write_text("[]")
    metrics = evaluate(GT_FILE, results)
    assert set(metrics) == set(metric_names(("keypoints", "bbox")))
    assert all(v == 0.0 for v in metrics.values()), metrics


def test_img_ids_restrict_evaluation_and_undefined_stats_are_minus_one():
    metrics = evaluate(GT_FILE, DETECTION_RESULTS, iou_types=("bbox",), img_ids=[785])
    torch.testing.assert_close(ours(metrics, "bbox"), reference_stats(DETECTION_RESULTS, "bbox", img_ids=[785]))
    assert metrics["bbox/APS"] == -1.0 and metrics["bbox/APM"] == -1.0  # image 785 has one large person
    assert metrics != evaluate(GT_FILE, DETECTION_RESULTS, iou_types=("bbox",))
    assert "n/a" in format_metrics_table(metrics)


@pytest.mark.parametrize(
    ("img_ids", "message"),
    [([], "img_ids is empty"), ([785, 42], "[42]")],
)
def test_bad_img_ids_are_refused(img_ids, message):
    with pytest.raises(ValueError) as err:
        evaluate(GT_FILE, KEYPOINT_RESULTS, img_ids=img_ids)
    assert message in str(err.value)


def test_other_categories_are_ignored():
    plain = json.loads(KEYPOINT_RESULTS.read_text())
    noisy = plain + [{**r, "category_id": 3} for r in plain[:10]]
    assert evaluate(GT_FILE, noisy) == evaluate(GT_FILE, plain)


def test_load_results_drops_extra_fields():
    results = load_results(KEYPOINT_RESULTS)
    assert len(results) == 73
    assert all(set(r) == {"image_id", "category_id", "score", "keypoints"} for r in results)
    raw = json.loads(KEYPOINT_RESULTS.read_text())
    assert [r["keypoints"] for r in results] == [r["keypoints"] for r in raw]


def _entry(**changes) -> dict:
    entry = {"image_id": 785, "category_id": 1, "score": 0.9, "keypoints": [100.0, 100.0, 1.0] * 17}
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not None}


MALFORMED = {
    "not-json": ("{this is not json", ["not a valid JSON"]),
    "dict-not-list": (json.dumps({"annotations": []}), ["must be a JSON list", "dict"]),
    "entry-not-object": (json.dumps([_entry(), [1, 2]]), ["entry 1", "list"]),
    "missing-score": (json.dumps([_entry(), _entry(score=None)]), ["entry 1", "missing score"]),
    "no-keypoints-no-bbox": (json.dumps([_entry(keypoints=None)]), ["entry 0", "neither keypoints nor bbox"]),
    "keypoints-wrong-length": (json.dumps([_entry(), _entry(keypoints=[1.0] * 50)]), ["entry 1", "keypoints", "51", "50"]),
    "bbox-wrong-length": (json.dumps([_entry(bbox=[1, 2, 3])]), ["entry 0", "bbox", "4 numbers", "got 3"]),
    "negative-box": (json.dumps([_entry(bbox=[1, 2, -3, 4])]), ["entry 0", "negative width"]),
    "nan-keypoint": (json.dumps([_entry(keypoints=[1.0] * 50 + [float("nan")])]), ["entry 0", "keypoints[50]", "finite"]),
    "nan-score": (json.dumps([_entry(score=float("nan"))]), ["entry 0", "score", "finite"]),
    "string-image-id": (json.dumps([_entry(image_id="785")]), ["entry 0", "image_id", "integer"]),
    "unknown-image-id": (
        json.dumps([_entry(), _entry(image_id=123456), _entry(image_id=7)]),
        ["7, 123456", "not in the ground truth"],
    ),
}


def assert_helpful_error(evaluate_file, case: str, text: str, fragments: list[str], tmp_path: Path) -> None:
    """`evaluate_file(path)` on a file holding `text` fails naming the file and every fragment."""
    path = tmp_path / f"{case}.json"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        evaluate_file(path)
    message = str(err.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_results_file_is_a_helpful_error(case, tmp_path):
    assert_helpful_error(lambda path: evaluate(GT_FILE, path), case, *MALFORMED[case], tmp_path)


def _broken_ground_truth(annotation: dict) -> str:
    gt = json.loads(Path(GT_FILE).read_text())
    gt["annotations"][0].update(annotation)
    return json.dumps(gt)


MALFORMED_GT = {
    "not-json": ("this is not json {", ["not a JSON file"]),
    "no-annotations": (json.dumps({"images": [], "categories": []}), ["no list of annotations"]),
    "keypoints-wrong-length": (_broken_ground_truth({"keypoints": [1] * 50}), ["keypoints", "51 numbers, got 50"]),
    "bbox-wrong-length": (_broken_ground_truth({"bbox": [1, 2, 3]}), ["bbox must have 4 numbers"]),
    "no-area": (_broken_ground_truth({"area": None}), ["area is None, not a number"]),
    "nan-keypoint": (_broken_ground_truth({"keypoints": [1] * 50 + [float("nan")]}), ["keypoints", "[50]", "finite"]),
}


@pytest.mark.parametrize("case", list(MALFORMED_GT))
def test_malformed_ground_truth_is_a_helpful_error(case, tmp_path):
    """COCOeval would fail deep inside (an IndexError for 50 key-point numbers) or score garbage."""
    assert_helpful_error(lambda path: evaluate(path, []), case, *MALFORMED_GT[case], tmp_path)


def test_missing_files_are_a_helpful_error(tmp_path):
    with pytest.raises(ValueError, match="results file not found"):
        load_results(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="ground-truth annotation file not found"):
        load_ground_truth(tmp_path / "nope.json")


def test_results_from_detections_round_trip(gt_json):
    """GT boxes as xyxy tensors and GT key points as (N, 17, 3) -> COCO results -> perfect scores."""
    results = []
    for image in gt_json["images"]:
        anns = [a for a in gt_json["annotations"] if a["image_id"] == image["id"] and a["num_keypoints"] > 0]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        kps = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32).reshape(-1, 17, 3)
        kps[..., 2] = (kps[..., 2] > 0).float()
        scores = torch.linspace(0.9, 0.5, len(anns))
        results += results_from_detections(image["id"], boxes, scores, kps)
    first = results[0]
    assert set(first) == {"image_id", "category_id", "score", "bbox", "keypoints"}
    assert first["category_id"] == 1 and len(first["keypoints"]) == 51 and len(first["bbox"]) == 4
    ann = next(a for a in gt_json["annotations"] if a["image_id"] == first["image_id"] and a["num_keypoints"] > 0)
    torch.testing.assert_close(torch.tensor(first["bbox"]), torch.tensor(ann["bbox"]), atol=0.005, rtol=0)
    assert all(isinstance(v, float) for v in first["keypoints"])
    assert load_results(results) == results  # valid COCO results
    metrics = evaluate(GT_FILE, results)
    assert metrics["keypoints/AP"] == 1.0
    torch.testing.assert_close(ours(metrics, "bbox"), reference_stats(results, "bbox"))


def test_results_from_detections_without_keypoints_and_rounding():
    results = results_from_detections(785, np.array([[10.123456, 20.0, 30.5, 60.25]]), [0.123456789], None)
    assert results == [{"image_id": 785, "category_id": 1, "score": 0.12346, "bbox": [10.12, 20.0, 20.38, 40.25]}]


@pytest.mark.parametrize(
    ("boxes", "scores", "keypoints", "message"),
    [
        (np.zeros((2, 4)), np.ones(2), np.zeros((2, 17, 2)), "(N, 17, 3)"),
        (np.zeros((2, 4)), np.ones(3), None, "2 boxes but 3 scores"),
        (np.array([[10.0, 10.0, 5.0, 20.0]]), np.ones(1), None, "x2 < x1"),
        (None, np.ones(1), None, "both are None"),
        (np.array([[0.0, 0.0, np.nan, 1.0]]), np.ones(1), None, "NaN"),
    ],
)
def test_results_from_detections_refuses_bad_arrays(boxes, scores, keypoints, message):
    with pytest.raises(ValueError) as err:
        results_from_detections(785, boxes, scores, keypoints)
    assert message in str(err.value)


def test_format_metrics_table_names_every_stat(gt_json):
    metrics = evaluate(GT_FILE, gt_as_results(gt_json))
    table = format_metrics_table(metrics)
    for name in metric_names(("keypoints", "bbox")):
        assert name in table
    assert table.index("Key points") < table.index("keypoints/AP") < table.index("Boxes") < table.index("bbox/AP")
    ap_line = next(line for line in table.splitlines() if line.split()[0] == "bbox/AR1")
    assert ap_line.split()[1] == f"{100 * metrics['bbox/AR1']:.1f}" == "28.6"
    assert format_metrics_table({}) == "(no metrics)"


def test_write_metrics_json_is_complete_and_atomic(tmp_path):
    metrics = {"keypoints/AP": 0.5, "bbox/APS": -1.0}
    path = write_metrics_json(metrics, tmp_path / "eval" / "metrics.json")
    assert json.loads(path.read_text()) == metrics
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]  # no temporary left behind
    with pytest.raises(ValueError, match="keypoints/AP"):
        write_metrics_json({"keypoints/AP": math.nan}, path)
    assert json.loads(path.read_text()) == metrics  # the failed write left the old file whole


@pytest.mark.parametrize("verbose", [False, True])
def test_pycocotools_output_only_when_verbose(verbose, capsys):
    evaluate(GT_FILE, KEYPOINT_RESULTS, verbose=verbose)
    printed = capsys.readouterr().out
    assert ("Average Precision" in printed) == verbose
