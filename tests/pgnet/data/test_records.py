"""Tests of pgnet.data's COCO records: the sample's records, fixes counted and logged, and annotation files
that are not COCO (or missing) refused with a clear error."""
from __future__ import annotations

import copy
import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from pgnet.data import ImageRecord, load_coco_records
from pgnet.data.skeleton import NUM_KEYPOINTS as J
from tests.support.paths import COCO_SAMPLE_ANNOTATIONS, COCO_SAMPLE_IMAGES


def test_coco_sample_records(records):
    recs, counts = records
    assert [r.image_id for r in recs] == [785, 40083, 196141, 197388]
    assert counts["images"] == 4 and counts["people"] == 14 and counts["negative_images"] == 0
    assert sum(int((r.num_keypoints == 0).sum()) for r in recs) == 2
    raw = json.loads(COCO_SAMPLE_ANNOTATIONS.read_text())
    first = next(a for a in raw["annotations"] if a["image_id"] == 785)
    assert_close(torch.from_numpy(recs[0].boxes[0]), torch.tensor(first["bbox"], dtype=torch.float32))
    assert_close(torch.from_numpy(recs[0].keypoints[0].reshape(-1)),
                 torch.tensor(first["keypoints"], dtype=torch.float32))
    assert Path(recs[0].file).is_file()
    clone = pickle.loads(pickle.dumps(recs[1]))
    again = ImageRecord.from_dict(recs[1].to_dict())
    for other in (clone, again):
        assert other.image_id == recs[1].image_id and other.file == recs[1].file
        assert_close(torch.from_numpy(other.keypoints), torch.from_numpy(recs[1].keypoints))


def edited_annotations(tmp_path, edit) -> Path:
    data = json.loads(COCO_SAMPLE_ANNOTATIONS.read_text())
    edit(data)
    path = tmp_path / "person_keypoints_edited.json"
    path.write_text(json.dumps(data))
    return path


def test_fixes_are_counted_and_logged(tmp_path, caplog):
    def edit(data):
        anns = [a for a in data["annotations"] if a["image_id"] == 785]
        anns[0]["keypoints"][0] = 700.0  # nose x beyond the 640 px wide image
        anns[0]["keypoints"][3 * 9 + 1] = -5.0  # left wrist y above the image
        ghost = copy.deepcopy(anns[0])
        ghost.update(id=1, bbox=[10, 10, 0, 30])  # degenerate box
        crowd = copy.deepcopy(anns[0])
        crowd.update(id=2, iscrowd=1, bbox=[0, 0, 100, 50], num_keypoints=0, keypoints=[0] * 51)
        data["annotations"] += [ghost, crowd]
        data["images"].append({"id": 5, "file_name": "000000000005.jpg", "height": 10, "width": 10})

    with caplog.at_level(logging.WARNING, logger="pgnet.data"):
        recs, counts = load_coco_records(edited_annotations(tmp_path, edit), COCO_SAMPLE_IMAGES)
    assert counts["keypoints_outside_image"] == 2 and counts["degenerate_boxes"] == 1
    assert counts["crowd_regions"] == 1 and counts["negative_images"] == 1 and counts["images"] == 5
    assert "set unlabelled" in caplog.text and "empty box" in caplog.text
    rec = next(r for r in recs if r.image_id == 785)
    assert rec.num_people == 1 and rec.num_keypoints[0] == 15
    assert rec.keypoints[0, 0].tolist() == [0, 0, 0] and rec.keypoints[0, 9].tolist() == [0, 0, 0]
    assert rec.crowd_boxes.tolist() == [[0, 0, 100, 50]]
    negative = next(r for r in recs if r.image_id == 5)  # images without people are kept
    assert negative.num_people == 0 and negative.keypoints.shape == (0, J, 3)


@pytest.mark.parametrize("content,expected", [
    ("this is not json {", "not a JSON file"),
    ("[1, 2, 3]", "not an object"),
    (json.dumps({"images": [], "categories": []}), "annotations"),
    (json.dumps({"images": [], "annotations": [], "categories": [{"id": 3, "name": "car"}]}), "no 'person'"),
    (json.dumps({"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1, "name": "person"}]}),
     "images[0] lacks file_name"),
    (json.dumps({"images": [], "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}],
                 "categories": [{"id": 1, "name": "person"}]}), "annotations[0] lacks id"),
])
def test_files_that_are_not_coco_are_rejected_clearly(tmp_path, content, expected):
    path = tmp_path / "person_keypoints_bad.json"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        load_coco_records(path, tmp_path)
    message = str(err.value)
    assert str(path) in message and expected in message and "person_keypoints_val2017.json" in message


def test_a_missing_annotation_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        load_coco_records(tmp_path / "nope.json", tmp_path)
