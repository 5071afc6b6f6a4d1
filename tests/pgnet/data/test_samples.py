"""Tests of pgnet.data's samples, augmentation and Dataset: geometry checked against the pixels (a dot drawn
at a key point is found where its target says), randomness against call order, bad images as counted skips."""
from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch.testing import assert_close
from torch.utils.data import DataLoader

from pgnet.codec import TARGET_KEYS
from pgnet.config import AugmentConfig
from pgnet.data import (
    FLIP_INDEX,
    KEYPOINT_NAMES,
    META_KEYS,
    BadSample,
    CocoKeypoints,
    ImageRecord,
    affine_matrix,
    collate_samples,
    denormalize_image,
    make_sample,
    write_synthetic_coco,
)
from pgnet.data.image_cache import cache_images
from pgnet.data.skeleton import NUM_KEYPOINTS as J
from pgnet.data.transforms import (
    AffineParams,
    color_jitter,
    transform_points,
    warp_image,
)
from tests.support.paths import COCO_SAMPLE_ANNOTATIONS, COCO_SAMPLE_IMAGES

LEFT_WRIST, RIGHT_WRIST = KEYPOINT_NAMES.index("left_wrist"), KEYPOINT_NAMES.index("right_wrist")
MIRROR = AugmentConfig(scale=(1.0, 1.0), rotate=0.0, translate=0.0, flip=1.0, color=0.0)


def sample_of(record, **kwargs):
    args = dict(input_size=(128, 128), max_people=16, augment=AugmentConfig(), seed=0, epoch=0, train=True)
    args.update(kwargs)
    return make_sample(record, **args)


def keypoint_positions(sample, stride=4):
    """(K, 17, 2) key points in input pixels from a sample's targets, and their (K, 17) label mask."""
    k = len(sample["mask"])
    w = sample["hm"].shape[-1]
    cells = sample["hp_ind"].reshape(k, J)
    points = (np.stack([cells % w, cells // w], -1) + sample["hp_offset"].reshape(k, J, 2)) * stride
    return points, sample["hp_mask"].reshape(k, J) > 0


def test_sample_contract(records):
    sample = sample_of(records[0][1], input_size=(96, 128))
    assert set(sample) == {"image", *TARGET_KEYS, *META_KEYS}
    assert sample["image"].shape == (3, 96, 128) and sample["image"].dtype == np.float32
    assert sample["hm"].shape == (1, 24, 32)
    assert sample["image_id"].dtype == np.int64 and int(sample["image_id"]) == 40083
    assert sample["inv_affine"].shape == (2, 3) and sample["inv_affine"].dtype == np.float32
    assert sample["orig_size"].tolist() == [333, 500] and sample["flipped"].dtype == np.bool_
    assert all(isinstance(v, np.ndarray) for v in sample.values())
    assert pickle.loads(pickle.dumps(make_sample)) is make_sample
    from_row = sample_of(records[0][1].to_dict(), input_size=(96, 128))  # a Ray Data row works too
    assert all(np.array_equal(sample[k], from_row[k]) for k in sample)


def test_samples_do_not_depend_on_call_order(records):
    recs = records[0]
    forward = [sample_of(r, epoch=3) for r in recs]
    backward = [sample_of(r, epoch=3) for r in reversed(recs)][::-1]
    for a, b in zip(forward, backward):
        for key in a:
            assert np.array_equal(a[key], b[key]), key


@pytest.mark.parametrize("change", [{"epoch": 1}, {"seed": 1}])
def test_other_epochs_and_seeds_draw_other_augmentations(records, change):
    rec = records[0][3]
    a, b = sample_of(rec), sample_of(rec, **change)
    assert not np.array_equal(a["image"], b["image"])
    assert not np.array_equal(a["inv_affine"], b["inv_affine"])


def test_each_image_draws_its_own_augmentation(records):
    rec = records[0][3]
    twin = ImageRecord.from_dict({**rec.to_dict(), "image_id": rec.image_id + 1})  # same pixels, other id
    assert not np.array_equal(sample_of(rec)["inv_affine"], sample_of(twin)["inv_affine"])


def sorted_rows(boxes: np.ndarray) -> np.ndarray:
    return boxes[np.lexsort((boxes[:, 1], boxes[:, 0]))]


def test_evaluation_letterbox_keeps_everybody(records):
    recs = records[0]
    for rec in recs:
        s = sample_of(rec, augment=AugmentConfig(), train=False)  # train=False: no augmentation
        assert not s["flipped"] and s["mask"].sum() == rec.num_people
        boxes = s["box"][s["mask"] > 0] * 4  # input pixels
        corners = transform_points(boxes.reshape(-1, 2, 2), np.vstack([s["inv_affine"], [0, 0, 1]]))
        original = np.concatenate([rec.boxes[:, :2], rec.boxes[:, :2] + rec.boxes[:, 2:]], 1)
        mapped = corners.reshape(-1, 4)
        assert_close(torch.from_numpy(sorted_rows(mapped)).float(), torch.from_numpy(sorted_rows(original)),
                     atol=1e-2, rtol=0)
    h, w = 128, 128
    m = affine_matrix((333, 500), (h, w))  # letterbox: width fills, centred vertically
    assert_close(torch.from_numpy(transform_points(np.array([[0.0, 0.0], [500.0, 333.0]]), m)),
                 torch.tensor([[0.0, (128 - 333 * 128 / 500) / 2], [128.0, (128 + 333 * 128 / 500) / 2]],
                              dtype=torch.float64))


def test_flip_turns_a_left_wrist_into_the_right_wrist_at_the_mirrored_x(records):
    rec = records[0][0]  # one person, 17 labelled key points
    plain = sample_of(rec, augment=None, train=False)
    mirrored = sample_of(rec, augment=MIRROR)
    assert mirrored["flipped"] and not plain["flipped"]
    p, labelled = keypoint_positions(plain)
    m, mirrored_labelled = keypoint_positions(mirrored)
    assert labelled[0, LEFT_WRIST] and mirrored_labelled[0, RIGHT_WRIST]
    assert_close(torch.tensor(m[0, RIGHT_WRIST]), torch.tensor([128 - p[0, LEFT_WRIST, 0], p[0, LEFT_WRIST, 1]]),
                 atol=1e-4, rtol=0)
    assert_close(torch.tensor(m[0, LEFT_WRIST]), torch.tensor([128 - p[0, RIGHT_WRIST, 0], p[0, RIGHT_WRIST, 1]]),
                 atol=1e-4, rtol=0)
    assert_close(torch.tensor(m[0][list(FLIP_INDEX)][:, 0]), torch.tensor(128 - p[0][:, 0]), atol=1e-4, rtol=0)
    assert_close(torch.from_numpy(mirrored["image"]), torch.from_numpy(plain["image"][..., ::-1].copy()))


@pytest.fixture(scope="module")
def dot_record(tmp_path_factory):
    """A black 300 x 200 image with a white dot at the left wrist of one annotated person."""
    folder = tmp_path_factory.mktemp("dot")
    image = Image.new("RGB", (300, 200))
    cx, cy = 70.5, 120.5
    ImageDraw.Draw(image).ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=(255, 255, 255))
    image.save(folder / "dot.png")
    kps = np.zeros((1, J, 3), np.float32)
    kps[0, LEFT_WRIST] = (cx, cy, 2)
    return ImageRecord(1, str(folder / "dot.png"), 200, 300, np.array([[40, 60, 60, 90]], np.float32), kps,
                       np.array([1], np.int32), np.zeros((0, 4), np.float32))


@pytest.mark.parametrize("epoch", range(6))
def test_augmented_keypoints_follow_the_warped_image(dot_record, epoch):
    aug = AugmentConfig(scale=(0.8, 1.3), rotate=40.0, translate=0.1, flip=0.5, color=0.3)
    s = make_sample(dot_record, input_size=(256, 256), max_people=4, augment=aug, seed=1, epoch=epoch, train=True)
    gray = denormalize_image(s["image"]).astype(np.float64).mean(2)
    ys, xs = np.nonzero(gray > gray.max() / 2)
    weights = gray[ys, xs]
    dot = np.array([(xs + 0.5) @ weights, (ys + 0.5) @ weights]) / weights.sum()  # centroid, pixel centres
    joint = RIGHT_WRIST if s["flipped"] else LEFT_WRIST  # the mirrored left wrist is a right wrist
    points, labelled = keypoint_positions(s)
    assert labelled[0].tolist() == [j == joint for j in range(J)]
    assert_close(torch.tensor(points[0, joint]), torch.tensor(dot), atol=0.4, rtol=0)
    back = s["inv_affine"].astype(np.float64) @ np.r_[dot, 1.0]  # inv_affine undoes the warp
    assert_close(torch.tensor(back), torch.tensor([70.5, 120.5], dtype=torch.float64), atol=0.4, rtol=0)


@pytest.mark.parametrize("train", [True, False])
def test_an_image_without_people_is_a_negative_sample(dot_record, train):
    empty = ImageRecord.from_dict({**dot_record.to_dict(), "boxes": np.zeros((0, 4)),
                                   "keypoints": np.zeros((0, J, 3)), "num_keypoints": np.zeros(0)})
    s = make_sample(empty, input_size=(64, 64), max_people=4, augment=AugmentConfig(), seed=0, epoch=0,
                    train=train)
    assert s["mask"].sum() == 0 and s["hm"].max() == 0 and (s["hm_weight"] == 1).all()


def test_the_augmentation_draws_flip_both_ways(dot_record):
    flips = {bool(make_sample(dot_record, input_size=(64, 64), max_people=2, augment=AugmentConfig(), seed=1,
                              epoch=e, train=True)["flipped"]) for e in range(6)}
    assert flips == {True, False}


def test_strong_downscaling_is_antialiased():
    """A 1-pixel checkerboard shrunk 6x must become flat grey, not an aliasing pattern."""
    board = ((np.indices((600, 600)).sum(0) % 2) * 255).astype(np.uint8)
    image = Image.fromarray(np.stack([board] * 3, -1))
    out = warp_image(image, affine_matrix((600, 600), (100, 100), AffineParams(rotation=10.0)), (100, 100))
    inner = out[20:80, 20:80].astype(np.float64)
    assert abs(inner.mean() - 127.5) < 3 and inner.std() < 10


@pytest.mark.parametrize("strength", [0.0, 0.4])
def test_color_jitter(strength):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (8, 8, 3)).astype(np.float32)
    out = color_jitter(image, np.random.default_rng(1), strength)
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 1
    if strength == 0:
        assert_close(torch.from_numpy(out), torch.from_numpy(image))
    else:
        assert not np.allclose(out, image)


# ---------------------------------------------------------------- bad images and the Dataset

def coco_copy(tmp_path) -> Path:
    """A COCO root in tmp_path holding copies of the sample (the sample itself stays read-only)."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(COCO_SAMPLE_ANNOTATIONS, root / "annotations" / COCO_SAMPLE_ANNOTATIONS.name)
    shutil.copytree(COCO_SAMPLE_IMAGES, root / "val2017")
    for f in (root / "val2017").iterdir():
        f.chmod(0o644)
    return root


@pytest.mark.parametrize("damage,reason", [
    ("garbage", "cannot decode"),
    ("truncated", "cannot decode"),
    ("empty", "cannot decode"),
    ("missing", "not found"),
])
def test_bad_images_are_counted_skips(tmp_path, caplog, damage, reason):
    root = coco_copy(tmp_path)
    victim = root / "val2017" / "000000040083.jpg"
    if damage == "garbage":
        victim.write_bytes(np.random.default_rng(0).bytes(5000))
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:3000])
    elif damage == "empty":
        victim.write_bytes(b"")
    else:
        victim.unlink()
    data = CocoKeypoints(root, "val2017", input_size=(64, 64), max_people=8)
    with pytest.raises(BadSample, match=reason) as err:
        make_sample(data.records[1], input_size=(64, 64), max_people=8, augment=None, seed=0, epoch=0, train=False)
    assert err.value.path == str(victim)
    assert pickle.loads(pickle.dumps(err.value)).path == str(victim)  # crosses worker processes
    with caplog.at_level(logging.WARNING, logger="pgnet.data"):
        samples = [data[i] for i in range(len(data))]
    assert samples[1] is None and data.bad_samples == 1 and "40083" in caplog.text
    images, targets, meta, num_bad = collate_samples(samples)
    assert num_bad == 1 and images.shape == (3, 3, 64, 64)
    assert meta["image_id"].tolist() == [785, 196141, 197388]


def test_ram_cache_gives_the_same_samples_and_still_counts_bad_images(tmp_path, caplog):
    """`data.cache: ram` decodes once; every sample, augmented or not, equals the one read from disk, and
    an unreadable image is skipped and counted on every pass, as without the cache."""
    root = coco_copy(tmp_path)
    (root / "val2017" / "000000040083.jpg").write_bytes(b"")
    kwargs = dict(input_size=(64, 64), max_people=8, augment=AugmentConfig(), train=True, seed=3)
    from_disk = CocoKeypoints(root, "val2017", **kwargs)
    want = {}
    for epoch in (0, 1):
        from_disk.set_epoch(epoch)
        want[epoch] = [from_disk[i] for i in range(len(from_disk))]
    cached = CocoKeypoints(root, "val2017", cache=True, **kwargs)
    assert sorted(cached.images) == sorted(r.image_id for r in cached.records)
    for f in (root / "val2017").iterdir():
        f.unlink()  # from here on, only the cache can give the images
    for epoch in (0, 1):
        cached.set_epoch(epoch)
        with caplog.at_level(logging.WARNING, logger="pgnet.data"):
            got = [cached[i] for i in range(len(cached))]
        assert got[1] is None and cached.bad_samples == epoch + 1 and "cannot decode" in caplog.text
        assert [g is None for g in got] == [w is None for w in want[epoch]] == [False, True, False, False]
        for w, g in zip(want[epoch], got):
            if g is not None:
                assert w.keys() == g.keys() and all(np.array_equal(w[k], g[k]) for k in w)
    assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(want[0], want[1]) if a is not None)
    # DataLoader workers (data.workers) are forked with the cache and need no file either
    images, _, meta, num_bad = next(iter(DataLoader(cached, batch_size=4, collate_fn=collate_samples, num_workers=1)))
    assert num_bad == 1 and np.array_equal(images[0].numpy(), want[1][0]["image"])


def test_ram_cache_that_does_not_fit_reads_from_disk_and_says_so(records, caplog):
    records, _ = records  # (records, fix counts)
    needed = sum(r.height * r.width * 4 for r in records)  # PIL's RGB: 4 bytes a pixel
    with caplog.at_level(logging.WARNING, logger="pgnet.data"):
        assert cache_images(records, name="val2017", progress=False, available=needed) is None
    assert "data.cache=none" in caplog.text and f"{needed / 2**30:.1f} GiB" in caplog.text
    assert len(cache_images(records, name="val2017", progress=False, available=2 * needed)) == len(records)


def test_image_size_must_match_the_annotation(tmp_path):
    path = tmp_path / "small.jpg"
    Image.new("RGB", (20, 10)).save(path)
    rec = ImageRecord(9, str(path), 30, 20, np.zeros((0, 4), np.float32), np.zeros((0, J, 3), np.float32),
                      np.zeros(0, np.int32), np.zeros((0, 4), np.float32))
    with pytest.raises(BadSample, match="annotations say 30x20"):
        make_sample(rec, input_size=(64, 64), max_people=2, augment=None, seed=0, epoch=0, train=False)


def test_a_missing_split_says_how_to_get_data(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        CocoKeypoints(tmp_path, "train2017")
    message = str(err.value)
    assert "person_keypoints_train2017.json" in message and "cocodataset.org" in message
    assert "pgnet data synth" in message


def test_all_bad_batch_is_empty():
    images, targets, meta, num_bad = collate_samples([None, None])
    assert images.shape[0] == 0 and targets == {} and meta == {} and num_bad == 2


def test_dataset_over_a_synthetic_split(tmp_path):
    write_synthetic_coco(tmp_path, "train", num_images=6, seed=0, image_size=(96, 128))
    data = CocoKeypoints(tmp_path, "train", input_size=(64, 96), max_people=8, augment=AugmentConfig(),
                         train=True, seed=2)
    loader = DataLoader(data, batch_size=4, collate_fn=collate_samples)
    images, targets, meta, num_bad = next(iter(loader))
    assert images.shape == (4, 3, 64, 96) and num_bad == 0
    assert targets["hm"].shape == (4, 1, 16, 24) and targets["hp_ind"].shape == (4, 8 * J)
    assert targets["ind"].dtype == torch.int64 and meta["inv_affine"].shape == (4, 2, 3)
    assert targets["mask"].sum() > 0
    first = data[0]
    data.set_epoch(1)
    assert not np.array_equal(first["image"], data[0]["image"])
    data.set_epoch(0)
    assert np.array_equal(first["image"], data[0]["image"])
