"""COCO evaluation of person key points (OKS) and boxes (IoU) with pycocotools' COCOeval.

Every COCOeval stat comes back by name (`keypoints/AP`, `bbox/APS`, ...), the names used everywhere.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pgnet.atomic import write_text_atomic
from pgnet.data.records import read_coco_json
from pgnet.errors import DataError
from pgnet.evaluation.results import (
    PERSON_CATEGORY_ID,
    check_number,
    check_numbers,
    load_results,
)

log = logging.getLogger(__name__)

# The order of COCOeval.stats after summarize(), per iou type.
STAT_NAMES: dict[str, tuple[str, ...]] = {
    "keypoints": ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL"),
    "bbox": ("AP", "AP50", "AP75", "APS", "APM", "APL", "AR1", "AR10", "AR100", "ARS", "ARM", "ARL"),
}
RESULT_FIELD = {"keypoints": "keypoints", "bbox": "bbox"}  # what a result needs for each iou type
SECTION_TITLES = {"keypoints": "Key points (OKS)", "bbox": "Boxes (IoU)"}
UNDEFINED = -1.0  # COCOeval's value for a stat with no ground truth (e.g. no medium people)


def metric_names(iou_types: Iterable[str] = ("keypoints", "bbox")) -> list[str]:
    """The full metric names `evaluate` can return for these iou types, in COCO order."""
    return [f"{t}/{name}" for t in iou_types for name in STAT_NAMES[t]]


def load_ground_truth(gt: str | Path | COCO, verbose: bool = False) -> COCO:
    """A pycocotools COCO object from an annotation file (or the object itself)."""
    if isinstance(gt, COCO):
        return gt
    path = Path(gt)
    if not path.is_file():
        raise DataError(f"{path}: ground-truth annotation file not found; pass a COCO person_keypoints_*.json")
    data = read_coco_json(path)
    _check_person_annotations(data, path)
    coco = COCO()
    coco.dataset = data
    with _quiet(verbose):
        coco.createIndex()
    return coco


def _check_person_annotations(data: dict, path: Path) -> None:
    """The fields COCOeval reads from a person annotation, well formed (else it fails deep inside)."""
    for ann in data["annotations"]:
        if ann["category_id"] != PERSON_CATEGORY_ID:
            continue
        where = f"{path}: annotation {ann['id']}"
        check_numbers(ann["bbox"], 4, f"{where}: bbox")
        check_number(ann.get("area"), f"{where}: area")
        if "keypoints" in ann:
            check_numbers(ann["keypoints"], 51, f"{where}: keypoints (17 COCO key points as x, y, v)")


def evaluate(
    gt: str | Path | COCO,
    results: str | Path | Sequence[dict],
    iou_types: Sequence[str] = ("keypoints", "bbox"),
    img_ids: Iterable[int] | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """Run COCOeval (person category only) for each iou type; return every stat by name.

    Key points are scored on the results that have `keypoints`, boxes on those with a `bbox`.
    When results exist but none carries the field an iou type needs, that type is skipped with a
    logged note and its names are absent. An empty result list scores 0 (the model found nobody).
    A stat with no ground truth in its range (e.g. APM on images without medium people) is -1, as
    COCO reports it; callers averaging or plotting metrics should treat -1 as "undefined".
    `img_ids` restricts the evaluation to those images (e.g. the first N of a split).
    """
    coco_gt = load_ground_truth(gt, verbose)
    unknown_types = [t for t in iou_types if t not in STAT_NAMES]
    if unknown_types:
        raise ValueError(f"unknown iou type(s) {unknown_types}; choose from {sorted(STAT_NAMES)}")
    entries = load_results(results, image_ids=coco_gt.getImgIds())
    people = [r for r in entries if r["category_id"] == PERSON_CATEGORY_ID]
    if len(people) < len(entries):
        log.info("evaluate: %d result(s) of other categories ignored (person only)", len(entries) - len(people))
    eval_img_ids = _evaluation_images(coco_gt, img_ids)
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        subset = _results_for(people, iou_type)
        if people and not subset:
            log.info("evaluate: no result has a %r field; %s metrics skipped", RESULT_FIELD[iou_type], iou_type)
            continue
        if iou_type == "keypoints":
            _check_keypoint_ground_truth(coco_gt)
        stats = _run_cocoeval(coco_gt, subset, iou_type, eval_img_ids, verbose)
        metrics.update({f"{iou_type}/{name}": float(v) for name, v in zip(STAT_NAMES[iou_type], stats)})
    return metrics


def format_stat(value: float) -> str:
    """A COCO stat as a percentage with one decimal; "n/a" for COCOeval's -1 (no ground truth in that range)."""
    return "n/a" if value < 0 else f"{100.0 * value:.1f}"


def format_metrics_table(metrics: dict[str, float]) -> str:
    """A two-section text table (key points, boxes) of the metrics as percentages."""
    lines: list[str] = []
    width = max((len(k) for k in metrics), default=0) + 2
    undefined = False
    for iou_type, title in SECTION_TITLES.items():
        names = [n for n in metric_names([iou_type]) if n in metrics]
        if not names:
            continue
        lines.append(title)
        for name in names:
            value = metrics[name]
            undefined |= value < 0
            lines.append(f"  {name:<{width}}{format_stat(value):>6}")
    known = set(metric_names(STAT_NAMES))
    others = [k for k in metrics if k not in known]
    if others:
        lines.append("Other")
        lines.extend(f"  {k:<{width}}{metrics[k]:>6.4g}" for k in others)
    if undefined:
        lines.append("(values in %; n/a: no ground truth in that size range, COCOeval's -1)")
    elif lines:
        lines.append("(values in %)")
    return "\n".join(lines) if lines else "(no metrics)"


def write_metrics_json(metrics: dict[str, float], path: str | Path) -> Path:
    """Write the metrics as JSON atomically (a reader never sees a half-written file)."""
    path = Path(path)
    bad = [k for k, v in metrics.items() if not math.isfinite(float(v))]
    if bad:
        raise ValueError(f"metrics {bad} are not finite numbers; JSON cannot hold them")
    return write_text_atomic(path, json.dumps({k: float(v) for k, v in metrics.items()}, indent=2) + "\n")


def _results_for(people: list[dict], iou_type: str) -> list[dict]:
    """Fresh result dicts for one iou type (loadRes adds fields to the dicts it is given).

    Key-point results go without their bbox: loadRes treats a list whose first entry has a bbox
    as box results and takes the area from the box; without it, the area (used for the APM/APL
    ranges) comes from the key points' extent, COCO's convention for key-point results, so the
    key-point metrics do not depend on whether boxes were also predicted.
    """
    field = RESULT_FIELD[iou_type]
    keep = ("image_id", "category_id", "score", field)
    return [{k: r[k] for k in keep} for r in people if field in r]


def _run_cocoeval(coco_gt: COCO, results: list[dict], iou_type: str, img_ids: list[int], verbose: bool) -> list[float]:
    with _quiet(verbose):
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.catIds = [PERSON_CATEGORY_ID]
        evaluator.params.imgIds = img_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return list(evaluator.stats)


def _empty_results(coco_gt: COCO) -> COCO:
    """What loadRes would build for no detections (loadRes itself fails on an empty list)."""
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    coco_dt.createIndex()
    return coco_dt


def _evaluation_images(coco_gt: COCO, img_ids: Iterable[int] | None) -> list[int]:
    all_ids = sorted(coco_gt.getImgIds())
    if img_ids is None:
        return all_ids
    wanted = sorted({int(i) for i in img_ids})
    if not wanted:
        raise ValueError("img_ids is empty: give at least one image id, or None for all images")
    unknown = sorted(set(wanted) - set(all_ids))
    if unknown:
        raise ValueError(f"img_ids {unknown[:10]} are not in the ground truth; pick ids from its images")
    return wanted


def _check_keypoint_ground_truth(coco_gt: COCO) -> None:
    anns = coco_gt.loadAnns(coco_gt.getAnnIds(catIds=[PERSON_CATEGORY_ID]))
    if any("num_keypoints" not in a or "keypoints" not in a for a in anns):
        raise ValueError(
            "the ground truth has person annotations without key points; use a person_keypoints_*.json "
            "file, or evaluate with iou_types=('bbox',)"
        )


def _quiet(verbose: bool) -> contextlib.AbstractContextManager:
    """pycocotools prints progress and tables on stdout; keep it unless asked."""
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
