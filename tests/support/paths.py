"""Where the tests find data that lives outside the repository."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout
# ../shared/data/coco_sample: four COCO val2017 images, their annotations and example results (not copied in).
COCO_SAMPLE = REPO.parent / "shared/data/coco_sample"
COCO_SAMPLE_ANNOTATIONS = COCO_SAMPLE / "annotations/person_keypoints_val2017.json"
COCO_SAMPLE_IMAGES = COCO_SAMPLE / "val2017"
