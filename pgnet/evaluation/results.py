"""COCO results files: validate what a user or the decoder hands to COCOeval.

A result is `{"image_id", "category_id", "score"}` plus `keypoints` (51 numbers) and/or `bbox` (xywh).
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pgnet.data.skeleton import NUM_KEYPOINTS, PERSON_CATEGORY
from pgnet.errors import DataError

PERSON_CATEGORY_ID: int = PERSON_CATEGORY["id"]
RESULT_FIELDS = ("image_id", "category_id", "score", "keypoints", "bbox")
COORD_DECIMALS = 2  # 0.01 px is far below any OKS/IoU tolerance
SCORE_DECIMALS = 5  # enough to keep the detectors' ranking; fewer would create ties


def load_results(
    path_or_list: str | Path | Sequence[dict],
    image_ids: Iterable[int] | None = None,
) -> list[dict]:
    """Read and validate COCO results; return clean copies holding only `RESULT_FIELDS`.

    Extra fields (`center`, `scale`, `id`, `area`, ...) are dropped. With `image_ids` (the
    ground truth's images), results for any other image are an error naming those ids.
    """
    source = str(path_or_list) if isinstance(path_or_list, (str, Path)) else "results list"
    raw = _read_json(Path(path_or_list)) if isinstance(path_or_list, (str, Path)) else path_or_list
    if isinstance(raw, np.ndarray) or not isinstance(raw, (list, tuple)):
        raise DataError(
            f"{source}: COCO results must be a JSON list of result objects, got {type(raw).__name__}. "
            "Write one object per detection: [{\"image_id\": ..., \"category_id\": 1, \"score\": ..., "
            "\"keypoints\": [...51 numbers]}, ...]"
        )
    results = [_clean_entry(entry, index, source) for index, entry in enumerate(raw)]
    if image_ids is not None:
        _check_image_ids(results, set(image_ids), source)
    return results


def results_from_detections(
    image_id: int,
    boxes_xyxy: Any,
    scores: Any,
    keypoints: Any | None = None,
    category_id: int = PERSON_CATEGORY_ID,
) -> list[dict]:
    """COCO result dicts for one image's detections (arrays or tensors, in image pixels).

    `boxes_xyxy` is (N, 4) or None, `scores` (N,), `keypoints` (N, 17, 3) as x, y, score (or
    (N, 51)) or None. Boxes become xywh; coordinates are rounded to 0.01 px, scores to 1e-5.
    """
    score_arr = _as_array(scores, "scores").reshape(-1)
    n = score_arr.shape[0]
    if boxes_xyxy is None and keypoints is None:
        raise ValueError("results_from_detections needs boxes_xyxy, keypoints or both; both are None")
    boxes = None if boxes_xyxy is None else _as_array(boxes_xyxy, "boxes_xyxy").reshape(-1, 4)
    kps = None if keypoints is None else _as_array(keypoints, "keypoints").reshape(n, -1)
    if boxes is not None and boxes.shape[0] != n:
        raise ValueError(f"results_from_detections: {boxes.shape[0]} boxes but {n} scores")
    if kps is not None and kps.shape[1] != 3 * NUM_KEYPOINTS:
        raise ValueError(
            f"results_from_detections: keypoints must be (N, {NUM_KEYPOINTS}, 3) as x, y, score; "
            f"got {kps.shape[1]} numbers per detection"
        )
    if boxes is not None and np.any(boxes[:, 2:] < boxes[:, :2]):
        raise ValueError("results_from_detections: a box has x2 < x1 or y2 < y1; boxes must be xyxy")
    out = []
    for i in range(n):
        result: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(category_id),
            "score": round(float(score_arr[i]), SCORE_DECIMALS),
        }
        if boxes is not None:
            x1, y1, x2, y2 = (float(v) for v in boxes[i])
            result["bbox"] = [round(v, COORD_DECIMALS) for v in (x1, y1, x2 - x1, y2 - y1)]
        if kps is not None:
            result["keypoints"] = [
                round(float(v), SCORE_DECIMALS if j % 3 == 2 else COORD_DECIMALS)
                for j, v in enumerate(kps[i])
            ]
        out.append(result)
    return out


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: results file not found; check the path given for the results")
    try:
        with path.open() as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a valid JSON file ({err}); a COCO results file is a JSON list") from err


def _clean_entry(entry: Any, index: int, source: str) -> dict:
    where = f"{source}: entry {index}"
    if not isinstance(entry, dict):
        raise DataError(f"{where} is a {type(entry).__name__}, expected an object with image_id, category_id, score")
    missing = [k for k in ("image_id", "category_id", "score") if k not in entry]
    if missing:
        raise DataError(f"{where} is missing {', '.join(missing)}; every result needs image_id, category_id, score")
    if "keypoints" not in entry and "bbox" not in entry:
        raise DataError(f"{where} has neither keypoints nor bbox; a result needs at least one of them")
    clean = {
        "image_id": _integer(entry["image_id"], f"{where}: image_id"),
        "category_id": _integer(entry["category_id"], f"{where}: category_id"),
        "score": check_number(entry["score"], f"{where}: score"),
    }
    if "keypoints" in entry:
        clean["keypoints"] = check_numbers(entry["keypoints"], 3 * NUM_KEYPOINTS, f"{where}: keypoints")
    if "bbox" in entry:
        bbox = check_numbers(entry["bbox"], 4, f"{where}: bbox")
        if bbox[2] < 0 or bbox[3] < 0:
            raise DataError(f"{where}: bbox {bbox} has a negative width or height; COCO boxes are x, y, w, h")
        clean["bbox"] = bbox
    return clean


def _integer(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{what} must be an integer, got {value!r}")
    return int(value)


def check_numbers(values: Any, length: int, what: str) -> list[float]:
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise DataError(f"{what} must be a list of {length} numbers, got {type(values).__name__}")
    if len(values) != length:
        raise DataError(f"{what} must have {length} numbers, got {len(values)}")
    return [check_number(v, f"{what}[{i}]") for i, v in enumerate(values)]


def check_number(value: Any, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise DataError(f"{what} is {value!r}, not a number")
    if not math.isfinite(float(value)):
        raise DataError(f"{what} is {value}, not a finite number")
    return float(value)


def _check_image_ids(results: list[dict], known: set[int], source: str) -> None:
    unknown = sorted({r["image_id"] for r in results} - known)
    if unknown:
        shown = ", ".join(str(i) for i in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise DataError(
            f"{source}: {len(unknown)} image id(s) are not in the ground truth: {shown}. "
            "Are the results and the ground-truth annotation file from the same split?"
        )


def _as_array(values: Any, what: str) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"results_from_detections: {what} contains NaN or inf")
    return arr
