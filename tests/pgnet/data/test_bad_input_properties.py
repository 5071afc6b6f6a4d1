"""Bad input, searched rather than listed: hypothesis generates COCO annotation files, configs and `--set`
overrides with missing fields, wrong types, NaN and infinities, negative or huge sizes, key points outside
the image, duplicate ids, empty files and random bytes. Each gives records (with counted skips) or one clear
`PGNetError`; nothing else escapes, and nothing hangs (hypothesis' deadline)."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgnet.config import Config, load_config
from pgnet.data.records import load_coco_records
from pgnet.errors import PGNetError

SETTINGS = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

odd_numbers = st.one_of(
    st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2**63, float("nan"), float("inf"), -float("inf"), 1e308]))
anything = st.recursive(st.one_of(st.none(), st.booleans(), odd_numbers, st.text(max_size=8)),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=4), max_leaves=8)
maybe = lambda good: st.one_of(good, anything)  # noqa: E731  a field that is sometimes right, sometimes not


@st.composite
def images(draw):
    image = {"id": draw(maybe(st.integers(1, 5))), "file_name": draw(maybe(st.just("a.jpg"))),
             "height": draw(maybe(st.integers(-5, 10**9))), "width": draw(maybe(st.integers(-5, 10**9)))}
    return {k: v for k, v in image.items() if not draw(st.booleans()) or draw(st.integers(0, 9)) > 0}


@st.composite
def annotations(draw):
    keypoints = draw(maybe(st.lists(odd_numbers, min_size=51, max_size=51)))
    ann = {"id": draw(maybe(st.integers(1, 3))), "image_id": draw(maybe(st.integers(1, 5))),
           "category_id": draw(maybe(st.just(1))), "bbox": draw(maybe(st.lists(odd_numbers, min_size=4, max_size=4))),
           "keypoints": keypoints, "num_keypoints": draw(maybe(st.integers(0, 17))),
           "iscrowd": draw(maybe(st.integers(0, 1))), "area": draw(maybe(odd_numbers))}
    return {k: v for k, v in ann.items() if draw(st.integers(0, 9)) > 0}


coco_files = st.fixed_dictionaries({
    "images": maybe(st.lists(images(), max_size=4)),
    "annotations": maybe(st.lists(annotations(), max_size=5)),
    "categories": maybe(st.just([{"id": 1, "name": "person", "keypoints": ["k"] * 17}])),
})


def load(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "person_keypoints_val2017.json"
        path.write_bytes(text)
        try:
            records, counts = load_coco_records(path, tmp)
        except PGNetError as err:
            assert str(err) and "\n" not in str(err).strip()[:0]  # a message to print on one line
            return
    for record in records:  # what is kept is usable: finite boxes and key points inside the image
        assert np.isfinite(record.boxes).all() and (record.boxes[:, 2:] > 0).all()
        labelled = record.keypoints[..., 2] > 0
        xs, ys = record.keypoints[..., 0][labelled], record.keypoints[..., 1][labelled]
        assert np.isfinite(xs).all() and (xs >= 0).all() and (xs <= record.width).all()
        assert np.isfinite(ys).all() and (ys >= 0).all() and (ys <= record.height).all()
    assert counts["images"] == len(records)


@SETTINGS
@given(coco_files)
def test_any_coco_like_file_gives_records_or_a_clear_error(data):
    load(json.dumps(data, allow_nan=True).encode())


@SETTINGS
@given(st.binary(max_size=200) | st.sampled_from([b"", b"{}", b"[]", b"null", b'{"images": 3}', b"\xff\xfe"]))
def test_random_bytes_are_a_clear_error(raw):
    load(raw)


KEYS = sorted(Config().flat())
values = st.one_of(odd_numbers.map(str), st.text(max_size=12), st.sampled_from(
    ["nan", "inf", "-inf", "-1", "1e400", "[]", "[1, 2, 3]", "{a: 1}", "null", "true", "'", "[", "resnet999"]))
keys = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=15), st.sampled_from(
    ["model", "model.", ".x", "model.backbone.x", "train..epochs", "data.input_size.0"]))


@SETTINGS
@given(st.lists(st.tuples(keys, values), max_size=4))
def test_any_set_overrides_give_a_config_or_a_clear_error(pairs):
    try:
        cfg = load_config(None, [f"{k}={v}" for k, v in pairs])
    except PGNetError as err:
        assert str(err)
        return
    assert isinstance(cfg, Config)
    for key, value in cfg.flat().items():  # a config that loads holds no NaN or infinity
        assert not (isinstance(value, float) and not math.isfinite(value)), key


@SETTINGS
@given(st.text(max_size=200) | st.builds(lambda k, v: f"{k}: {v}\n", keys, values))
def test_any_yaml_file_gives_a_config_or_a_clear_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.yaml"
        path.write_text(text)
        try:
            assert isinstance(load_config(path), Config)
        except PGNetError as err:
            assert str(err)


@pytest.mark.parametrize("raw", ["model.backbone", "=1", "model.backbone=", "train.epochs=nan"])
def test_a_malformed_override_names_itself(raw):
    with pytest.raises(PGNetError):
        load_config(None, [raw])
