"""Fixtures of the pgnet.data tests: the COCO sample's records."""
from __future__ import annotations

import pytest

from pgnet.data import load_coco_records
from tests.support.paths import COCO_SAMPLE_ANNOTATIONS, COCO_SAMPLE_IMAGES


@pytest.fixture(scope="module")
def records():
    return load_coco_records(COCO_SAMPLE_ANNOTATIONS, COCO_SAMPLE_IMAGES)
