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
    for index, image in enumerate(data["images"]):
        lacking = [k for k in ("id", "file_name", "height", "width") if not isinstance(image, dict) or k not in image]
        if lacking:
            raise DataError(f"{path}: images[{index}] lacks {', '.join(lacking)}; expected {COCO_LAYOUT}")
    for index, ann in enumerate(data["annotations"]):
        lacking = [k for k in ("id", "image_id", "category_id", "bbox") if not isinstance(ann, dict) or k not in ann]
        if lacking:
            raise DataError(f"{path}: annotations[{index}] lacks {', '.join(lacking)}; expected {COCO_LAYOUT}")
    for index, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or "id" not in category:
            raise DataError(f"{path}: categories[{index}] has no id; expected {COCO_LAYOUT}")
    return data


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
        box = np.asarray(ann["bbox"], np.float64).reshape(-1)
        if box.shape != (4,) or not np.all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
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
    outside = labelled & ((kps[:, 0] < 0) | (kps[:, 0] > width) | (kps[:, 1] < 0) | (kps[:, 1] > height))
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
