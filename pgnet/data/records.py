"""COCO person-keypoint annotations read into small per-image records (no pixels), checked and cleaned.

A record is plain and picklable: what Ray Data shards and `make_sample` turns into a training sample.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from pycocotools.coco import COCO

from pgnet.errors import DataError, MissingFileError

log = logging.getLogger("pgnet.data")

NUM_JOINTS = 17
COCO_LAYOUT = ('a COCO person-keypoints JSON object {"images": [{"id", "file_name", "height", "width"}, ...], '
               '"annotations": [{"id", "image_id", "category_id", "bbox", "keypoints", "iscrowd"}, ...], '
               '"categories": [{"id", "name": "person", "keypoints"}, ...]}, like '
               'annotations/person_keypoints_val2017.json of COCO 2017')


@dataclass(frozen=True)
class ImageRecord:
    """One image's annotations: people (boxes xywh, key points x, y, v) and crowd regions, image pixels."""

    image_id: int
    file: str
    height: int
    width: int
    boxes: np.ndarray  # (N, 4) float32 xywh
    keypoints: np.ndarray  # (N, 17, 3) float32 x, y, v (v = 0: unlabelled)
    num_keypoints: np.ndarray  # (N,) int32 labelled key points per person
    crowd_boxes: np.ndarray  # (M, 4) float32 xywh, iscrowd regions

    @property
    def num_people(self) -> int:
        return len(self.boxes)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (a Ray Data row)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> "ImageRecord":
        """Rebuild a record from `to_dict`'s dict (or a Ray Data row holding the same keys)."""
        return cls(
            image_id=int(row["image_id"]), file=str(row["file"]), height=int(row["height"]),
            width=int(row["width"]),
            boxes=np.asarray(row["boxes"], np.float32).reshape(-1, 4),
            keypoints=np.asarray(row["keypoints"], np.float32).reshape(-1, NUM_JOINTS, 3),
            num_keypoints=np.asarray(row["num_keypoints"], np.int32).reshape(-1),
            crowd_boxes=np.asarray(row["crowd_boxes"], np.float32).reshape(-1, 4),
        )


def load_coco_records(ann_file: str | Path, image_dir: str | Path) -> tuple[list[ImageRecord], dict[str, int]]:
    """Read a COCO person-keypoints file into one record per image (sorted by image id), and counters.

    Every image is kept, also those without people (negatives). A labelled key point outside
    its image is set unlabelled and a person with an empty box (w or h <= 0) is skipped; both
    are counted and logged. Counters: images, people, crowd_regions, negative_images,
    keypoints_outside_image, degenerate_boxes, other_categories.
    """
    ann_file = Path(ann_file)
    data = read_coco_json(ann_file)
    person_ids = _person_category_ids(data, ann_file)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    counts: Counter[str] = Counter(
        images=0, people=0, crowd_regions=0, negative_images=0, keypoints_outside_image=0,
        degenerate_boxes=0, other_categories=0)
    records = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        anns = coco.imgToAnns.get(image_id, [])
        record = _image_record(info, anns, person_ids, Path(image_dir), ann_file, counts)
        counts["images"] += 1
        counts["people"] += record.num_people
        counts["crowd_regions"] += len(record.crowd_boxes)
        counts["negative_images"] += record.num_people == 0
        records.append(record)
    _log_fixes(ann_file, counts)
    return records, dict(counts)


def read_coco_json(path: Path) -> dict:
    """The annotation file's JSON, checked for COCO's structure (lists of images, annotations and
    categories with the fields every reader needs); a clear error otherwise."""
    if not path.is_file():
        raise MissingFileError(f"{path}: annotation file not found; expected {COCO_LAYOUT}")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a JSON file ({err}); expected {COCO_LAYOUT}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: the JSON top level is a {type(data).__name__}, not an object; expected {COCO_LAYOUT}")
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        raise DataError(f"{path}: not a COCO annotation file, no list of {', '.join(missing)}; expected {COCO_LAYOUT}")
    _check_fields(path, data)
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_fields(path: Path, data: dict) -> None:
    """Every field a reader needs has COCO's type, ids are unique: a clear error naming the first that is not
    (a wrong box or a key point outside its image is not an error: `_image_record` skips and counts it)."""
    def fail(where: str, problem: str) -> None:
        raise DataError(f"{path}: {where} {problem}; expected {COCO_LAYOUT}")

    seen: set[int] = set()
    for i, image in enumerate(data["images"]):
        lacking = [k for k in ("id", "file_name", "height", "width") if not isinstance(image, dict) or k not in image]
        if lacking:
            fail(f"images[{i}]", f"lacks {', '.join(lacking)}")
        if not _is_int(image["id"]) or image["id"] in seen:
            fail(f"images[{i}]", f"has id {image['id']!r}: ids must be unique integers")
        seen.add(image["id"])
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            fail(f"images[{i}]", f"has file_name {image['file_name']!r}, not a file name")
        if not all(_is_int(image[k]) and 0 < image[k] <= 10**6 for k in ("height", "width")):
            fail(f"images[{i}]", f"is {image['height']!r} x {image['width']!r} pixels, not two positive integers")
    seen = set()
    for i, ann in enumerate(data["annotations"]):
        lacking = [k for k in ("id", "image_id", "category_id", "bbox") if not isinstance(ann, dict) or k not in ann]
        if lacking:
            fail(f"annotations[{i}]", f"lacks {', '.join(lacking)}")
        bad = [k for k in ("id", "image_id", "category_id") if not _is_int(ann[k])]
        if bad or ann["id"] in seen:
            fail(f"annotations[{i}]", f"has {bad[0]} {ann[bad[0]]!r}, not an integer" if bad else
                 f"has id {ann['id']}, which an earlier annotation has: ids must be unique")
        seen.add(ann["id"])
        kps = ann.get("keypoints")
        if kps is not None and not (isinstance(kps, list) and all(_is_number(v) for v in kps)):
            fail(f"annotations[{i}]", "has keypoints that are not a list of numbers (x, y, v x 17)")
        if ann.get("iscrowd", 0) not in (0, 1):
            fail(f"annotations[{i}]", f"has iscrowd {ann['iscrowd']!r}, not 0 or 1")
    for i, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            fail(f"categories[{i}]", "has no integer id")


def _person_category_ids(data: dict, path: Path) -> set[int]:
    ids = {c.get("id") for c in data["categories"] if isinstance(c, dict) and c.get("name") == "person"}
    if not ids:
        names = [c.get("name") for c in data["categories"] if isinstance(c, dict)]
        raise DataError(f"{path}: no 'person' category (categories: {names}); expected {COCO_LAYOUT}")
    return ids


def _image_record(info: dict, anns: list[dict], person_ids: set[int], image_dir: Path, source: Path,
                  counts: Counter) -> ImageRecord:
    height, width = int(info["height"]), int(info["width"])
    boxes, keypoints, crowd = [], [], []
    for ann in anns:
        if ann["category_id"] not in person_ids:
            counts["other_categories"] += 1
            continue
        raw = ann["bbox"]
        numbers = isinstance(raw, list) and len(raw) == 4 and all(_is_number(v) for v in raw)
        box = np.asarray(raw if numbers else [0, 0, 0, 0], np.float64)
        if not numbers or not np.all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
            counts["degenerate_boxes"] += 1
            log.debug("%s: annotation %s of image %s has an empty or malformed box %s; skipped",
                      source, ann.get("id"), info["id"], ann["bbox"])
            continue
        if ann.get("iscrowd", 0):
            crowd.append(box)
            continue
        boxes.append(box)
        keypoints.append(_clean_keypoints(ann, height, width, source, counts))
    kps = np.asarray(keypoints, np.float32).reshape(-1, NUM_JOINTS, 3)
    return ImageRecord(
        image_id=int(info["id"]), file=str(image_dir / info["file_name"]), height=height, width=width,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4), keypoints=kps,
        num_keypoints=(kps[..., 2] > 0).sum(1).astype(np.int32),
        crowd_boxes=np.asarray(crowd, np.float32).reshape(-1, 4))


def _clean_keypoints(ann: dict, height: int, width: int, source: Path, counts: Counter) -> np.ndarray:
    """(17, 3) key points; a labelled point outside the image becomes unlabelled (0, 0, 0)."""
    raw = ann.get("keypoints")
    if raw is None:  # e.g. an instances file: boxes without key points
        return np.zeros((NUM_JOINTS, 3), np.float64)
    kps = np.asarray(raw, np.float64).reshape(-1)
    if kps.shape != (3 * NUM_JOINTS,):
        raise DataError(f"{source}: annotation {ann.get('id')} has {kps.size} key-point numbers, "
                         f"expected {3 * NUM_JOINTS} (17 COCO key points as x, y, v)")
    kps = kps.reshape(NUM_JOINTS, 3)
    labelled = kps[:, 2] > 0
    inside = (kps[:, 0] >= 0) & (kps[:, 0] <= width) & (kps[:, 1] >= 0) & (kps[:, 1] <= height)  # NaN: outside
    kps[~labelled] = 0
    outside = labelled & ~inside
    if outside.any():
        counts["keypoints_outside_image"] += int(outside.sum())
        log.debug("%s: annotation %s: %d key point(s) outside the %dx%d image set unlabelled",
                  source, ann.get("id"), int(outside.sum()), width, height)
        kps[outside] = 0
    return kps


def _log_fixes(source: Path, counts: Counter) -> None:
    if counts["keypoints_outside_image"]:
        log.warning("%s: %d key point(s) outside their image were set unlabelled", source,
                    counts["keypoints_outside_image"])
    if counts["degenerate_boxes"]:
        log.warning("%s: %d person annotation(s) with an empty box (w or h <= 0) were skipped", source,
                    counts["degenerate_boxes"])
