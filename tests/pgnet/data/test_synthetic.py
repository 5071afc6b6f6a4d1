"""Tests of pgnet.data.skeleton and pgnet.data.synthetic: the COCO constants against COCO's own files,
and the synthetic data set against pycocotools, its label map, its pixels and its cache marker.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from pgnet.data import synthetic
from pgnet.data.skeleton import (
    FLIP_INDEX,
    FLIP_PAIRS,
    KEYPOINT_NAMES,
    NUM_KEYPOINTS,
    OKS_SIGMAS,
    PERSON_CATEGORY,
    SKELETON,
)
from pgnet.data.synthetic import (
    MARKER_NAME,
    MIN_VISIBLE_KEYPOINTS,
    OCCLUDER_LABEL,
    image_id,
    render_synthetic_image,
    split_code,
    write_synthetic_coco,
    write_synthetic_dataset,
)
from tests.support.paths import COCO_SAMPLE, COCO_SAMPLE_ANNOTATIONS

# COCO's person skeleton as printed in person_keypoints_*.json (1-based), written out independently.
COCO_SKELETON_1BASED = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8],
                        [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
SEED = 7
TRAIN, VAL = "train2017", "val2017"
N_TRAIN, N_VAL = 30, 10
FACE = range(5)  # nose, eyes, ears: may be hidden behind the figure's own head


# ---------------------------------------------------------------- skeleton

def test_skeleton_matches_coco_definition():
    assert NUM_KEYPOINTS == len(KEYPOINT_NAMES) == 17
    assert KEYPOINT_NAMES[0] == "nose" and KEYPOINT_NAMES[-1] == "right_ankle"
    assert [[a + 1, b + 1] for a, b in SKELETON] == COCO_SKELETON_1BASED
    assert PERSON_CATEGORY["skeleton"] == COCO_SKELETON_1BASED
    assert PERSON_CATEGORY["keypoints"] == list(KEYPOINT_NAMES) and PERSON_CATEGORY["id"] == 1
    np.testing.assert_allclose(OKS_SIGMAS, Params(iouType="keypoints").kpt_oks_sigmas, rtol=0, atol=1e-12)


@pytest.mark.skipif(not COCO_SAMPLE.is_dir(), reason="shared/data/coco_sample is not beside the checkout")
def test_person_category_equals_real_coco_file():
    gt = json.loads(COCO_SAMPLE_ANNOTATIONS.read_text())
    assert gt["categories"] == [PERSON_CATEGORY]


@pytest.mark.parametrize("j", range(NUM_KEYPOINTS))
def test_flip_index_swaps_left_and_right(j):
    name = KEYPOINT_NAMES[j]
    swapped = name.replace("left", "@").replace("right", "left").replace("@", "right")
    assert KEYPOINT_NAMES[FLIP_INDEX[j]] == swapped
    assert FLIP_INDEX[FLIP_INDEX[j]] == j
    assert (j in dict(FLIP_PAIRS)) == name.startswith("left_")


# ---------------------------------------------------------------- the written data set

@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("synthetic")
    train = write_synthetic_coco(root, TRAIN, N_TRAIN, SEED)
    val = write_synthetic_coco(root, VAL, N_VAL, SEED)
    return {"root": root, TRAIN: train, VAL: val,
            "train_json": json.loads(train.read_text()), "val_json": json.loads(val.read_text())}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("size", [(256, 256), (192, 320)])
def test_pycocotools_loads_and_every_image_decodes(tmp_path, size):
    ann = write_synthetic_coco(tmp_path, VAL, 4, SEED, image_size=size)
    assert ann == tmp_path / "annotations" / f"person_keypoints_{VAL}.json"
    coco = COCO(str(ann))
    assert len(coco.getImgIds()) == 4 and coco.getCatIds() == [1]
    assert coco.loadCats(1)[0] == PERSON_CATEGORY
    assert coco.dataset["info"]["synthetic"] is True and coco.dataset["info"]["seed"] == SEED
    for img in coco.loadImgs(coco.getImgIds()):
        assert (img["height"], img["width"]) == size
        assert img["file_name"] == f"{img['id']:012d}.jpg"
        with Image.open(tmp_path / VAL / img["file_name"]) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert image.size == (size[1], size[0])  # PIL: (width, height)
        assert coco.getAnnIds(imgIds=img["id"])


def test_same_arguments_give_identical_bytes_and_pixels(tmp_path, dataset):
    again = write_synthetic_coco(tmp_path, TRAIN, N_TRAIN, SEED)
    assert again.read_bytes() == dataset[TRAIN].read_bytes()
    for img in dataset["train_json"]["images"]:
        a = pixels(dataset["root"] / TRAIN / img["file_name"])
        b = pixels(tmp_path / TRAIN / img["file_name"])
        np.testing.assert_array_equal(a, b)


def test_a_prefix_of_a_split_is_the_same_images(tmp_path, dataset):
    """Image k depends on (seed, split, k) only, not on how many images were asked for."""
    short = json.loads(write_synthetic_coco(tmp_path, TRAIN, 3, SEED).read_text())
    full = dataset["train_json"]
    ids = {img["id"] for img in short["images"]}
    assert short["annotations"] == [a for a in full["annotations"] if a["image_id"] in ids]


def test_another_seed_gives_other_images(tmp_path, dataset):
    other = json.loads(write_synthetic_coco(tmp_path, TRAIN, 3, SEED + 1).read_text())
    for img in other["images"][:3]:
        a = pixels(dataset["root"] / TRAIN / img["file_name"]).astype(int)
        b = pixels(tmp_path / TRAIN / img["file_name"]).astype(int)
        assert np.abs(a - b).mean() > 10
    kps = [a["keypoints"] for a in dataset["train_json"]["annotations"]]
    assert not any(a["keypoints"] in kps for a in other["annotations"])


def test_train_and_val_are_disjoint(dataset):
    train, val = dataset["train_json"], dataset["val_json"]
    assert split_code(TRAIN) != split_code(VAL)
    assert not {i["id"] for i in train["images"]} & {i["id"] for i in val["images"]}
    assert not {a["id"] for a in train["annotations"]} & {a["id"] for a in val["annotations"]}
    for index in range(N_VAL):  # image k of val is not image k of train
        a = pixels(dataset["root"] / TRAIN / f"{image_id(TRAIN, index):012d}.jpg").astype(int)
        b = pixels(dataset["root"] / VAL / f"{image_id(VAL, index):012d}.jpg").astype(int)
        assert np.abs(a - b).mean() > 10


@pytest.mark.parametrize("split", [TRAIN, VAL])
def test_annotation_fields_and_keypoint_flags(dataset, split):
    data = dataset["train_json" if split == TRAIN else "val_json"]
    sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
    ids = [a["id"] for a in data["annotations"]]
    assert len(ids) == len(set(ids))
    for ann in data["annotations"]:
        h, w = sizes[ann["image_id"]]
        assert ann["category_id"] == 1 and ann["iscrowd"] == 0
        kps = np.asarray(ann["keypoints"], dtype=float).reshape(NUM_KEYPOINTS, 3)
        xy, v = kps[:, :2], kps[:, 2]
        assert set(v) <= {0.0, 1.0, 2.0}
        np.testing.assert_array_equal(xy[v == 0], 0.0)  # COCO: unlabelled points are 0, 0, 0
        labelled = xy[v > 0]
        assert (labelled >= 0).all() and (labelled[:, 0] <= w - 1).all() and (labelled[:, 1] <= h - 1).all()
        assert ann["num_keypoints"] == int((v > 0).sum())
        assert int((v == 2).sum()) >= MIN_VISIBLE_KEYPOINTS
        x, y, bw, bh = ann["bbox"]
        assert bw > 0 and bh > 0 and x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
        assert 0 < ann["area"] <= bw * bh
        seen = xy[v == 2]
        tol = 1.0
        assert (seen[:, 0] >= x - tol).all() and (seen[:, 0] <= x + bw + tol).all()
        assert (seen[:, 1] >= y - tol).all() and (seen[:, 1] <= y + bh + tol).all()


def test_people_per_image_and_occluded_points(dataset):
    data = dataset["train_json"]
    per_image = [sum(a["image_id"] == img["id"] for a in data["annotations"]) for img in data["images"]]
    assert min(per_image) >= 1 and max(per_image) <= synthetic.MAX_PEOPLE
    assert len(set(per_image)) >= 3  # a mix of crowded and sparse scenes
    flags = np.concatenate([np.asarray(a["keypoints"]).reshape(-1, 3)[:, 2] for a in data["annotations"]])
    body = np.concatenate([np.asarray(a["keypoints"]).reshape(-1, 3)[5:, 2] for a in data["annotations"]])
    assert (flags == 1).sum() >= 20 and (body == 1).sum() >= 5  # covered by others, not only own head
    assert (flags == 0).sum() >= 1  # some people are cut by the image border


def test_people_are_large_enough_to_learn(dataset):
    heights = np.array([a["bbox"][3] for a in dataset["train_json"]["annotations"]]) / 256
    assert np.median(heights) >= 0.25 and heights.max() <= 1.0
    assert (heights >= 0.1).mean() >= 0.9


def test_crowd_settings_bound_people_per_image_and_their_size(tmp_path):
    few_and_large = {"people": (1, 2), "heights": (0.6, 0.9)}
    default = write_synthetic_coco(tmp_path / "default", VAL, 24, 0, (128, 128))
    chosen = write_synthetic_coco(tmp_path / "chosen", VAL, 24, 0, (128, 128), **few_and_large)
    sizes = {}
    for name, path in (("default", default), ("chosen", chosen)):
        data = json.loads(path.read_text())
        per_image = [sum(a["image_id"] == img["id"] for a in data["annotations"]) for img in data["images"]]
        sizes[name] = np.median([max(a["bbox"][2], a["bbox"][3]) for a in data["annotations"]]) / 128
        if name == "chosen":
            assert 1 <= min(per_image) and max(per_image) <= 2
            assert data["info"]["people"] == [1, 2] and data["info"]["heights"] == [0.6, 0.9]
    assert sizes["chosen"] > 1.3 * sizes["default"]  # measured: 0.64 vs 0.41 of the image side


def test_json_records_the_rendered_scene(dataset):
    """The file holds exactly what render_synthetic_image draws, in COCO's conventions."""
    data = dataset["train_json"]
    for index in range(5):
        scene = render_synthetic_image(SEED, TRAIN, index)
        anns = [a for a in data["annotations"] if a["image_id"] == image_id(TRAIN, index)]
        assert len(anns) == len(scene.people)
        for ann, person in zip(anns, scene.people):
            kps = np.asarray(ann["keypoints"], dtype=float).reshape(NUM_KEYPOINTS, 3)
            np.testing.assert_array_equal(kps[:, 2], person.visibility)
            labelled = person.visibility > 0
            np.testing.assert_allclose(kps[labelled, :2], person.keypoints[labelled], atol=0.006)
            assert ann["bbox"] == list(person.bbox) and ann["area"] == person.area


@pytest.mark.parametrize("index", range(12))
def test_visibility_follows_what_is_drawn_in_front(index):
    scene = render_synthetic_image(SEED, TRAIN, index)
    h, w = scene.labels.shape
    assert 1 <= len(scene.people) <= synthetic.MAX_PEOPLE
    for person in scene.people:
        x, y = person.keypoints[:, 0], person.keypoints[:, 1]
        outside = (x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)
        np.testing.assert_array_equal(person.visibility == 0, outside)
        px = np.floor(person.keypoints + 0.5).astype(int)
        for j in np.flatnonzero(~outside):
            on = scene.labels[px[j, 1], px[j, 0]]
            if person.visibility[j] == 2:
                assert on == person.label
            elif on != person.label:  # covered: by a later person or a foreground occluder
                assert on > person.label or on == OCCLUDER_LABEL
            else:  # labelled-not-visible on its own pixels: only a face point behind its own head
                assert j in FACE
        # bbox and area are those of the visible mask
        ys, xs = np.where(scene.labels == person.label)
        assert person.area == xs.size
        assert person.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)


def test_hidden_keypoints_are_under_something_over_many_scenes():
    """Over 300 scenes (~1000 people) no key point is flagged hidden while lying on bare background:
    the drawn joints cover their own key-point pixels (PIL's half-pixel conventions included)."""
    hidden = 0
    for index in range(300):
        scene = render_synthetic_image(SEED + 100, TRAIN, index, (192, 192))
        for person in scene.people:
            px = np.floor(person.keypoints + 0.5).astype(int)
            for j in np.flatnonzero(person.visibility == 1):
                on = scene.labels[px[j, 1], px[j, 0]]
                assert on != 0, f"image {index}: {KEYPOINT_NAMES[j]} flagged hidden on bare background"
                hidden += on != person.label
    assert hidden >= 100


def test_visible_keypoints_sit_on_the_drawn_figure(dataset):
    """In the saved JPEG, a visible key point shows the figure, not the background behind it."""
    data = dataset["train_json"]
    differs, total = 0, 0
    for index in range(N_TRAIN):
        scene = render_synthetic_image(SEED, TRAIN, index)
        photo = pixels(dataset["root"] / TRAIN / f"{image_id(TRAIN, index):012d}.jpg").astype(int)
        background = scene.background.astype(int)
        anns = [a for a in data["annotations"] if a["image_id"] == image_id(TRAIN, index)]
        for ann in anns:
            kps = np.asarray(ann["keypoints"], dtype=float).reshape(NUM_KEYPOINTS, 3)
            for x, y, v in kps:
                if v != 2:
                    continue
                c, r = int(round(x)), int(round(y))
                total += 1
                differs += np.abs(photo[r, c] - background[r, c]).sum() > 45
    assert total > 300
    assert differs / total >= 0.9, f"only {differs}/{total} visible key points differ from the background"


def test_ground_truth_scores_perfect_ap_in_cocoeval(dataset):
    """pycocotools' OKS evaluation works on the file: the ground truth as results gives AP = 1."""
    coco = COCO(str(dataset[VAL]))
    results = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
               for a in coco.dataset["annotations"]]
    evaluator = COCOeval(coco, coco.loadRes(results), "keypoints")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


# ---------------------------------------------------------------- the cached train + val data set

def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_is_written_once_and_rewritten_when_arguments_change(tmp_path):
    root = tmp_path / "cache" / "synthetic"
    paths = write_synthetic_dataset(root, 4, 2, SEED, (128, 128))
    assert set(paths) == {TRAIN, VAL}
    assert all(p.is_file() for p in paths.values())
    assert json.loads((root / MARKER_NAME).read_text())["splits"] == {TRAIN: 4, VAL: 2}
    before = mtimes(root)
    assert write_synthetic_dataset(root, 4, 2, SEED, (128, 128)) == paths
    assert mtimes(root) == before  # nothing rewritten
    first = pixels(root / TRAIN / f"{image_id(TRAIN, 0):012d}.jpg")

    write_synthetic_dataset(root, 4, 2, SEED + 1, (128, 128))
    assert json.loads((root / MARKER_NAME).read_text())["seed"] == SEED + 1
    assert not np.array_equal(first, pixels(root / TRAIN / f"{image_id(TRAIN, 0):012d}.jpg"))
    write_synthetic_dataset(root, 3, 2, SEED + 1, (128, 128))  # fewer images: old ones must go
    assert len(list((root / TRAIN).glob("*.jpg"))) == 3
    assert len(COCO(str(paths[TRAIN])).getImgIds()) == 3
    assert sorted(p.name for p in root.parent.iterdir()) == [".synthetic.lock", "synthetic"]  # no leftovers


def test_a_damaged_dataset_is_rewritten(tmp_path):
    paths = write_synthetic_dataset(tmp_path / "d", 3, 1, SEED, (128, 128))
    victim = next((tmp_path / "d" / TRAIN).glob("*.jpg"))
    victim.unlink()
    write_synthetic_dataset(tmp_path / "d", 3, 1, SEED, (128, 128))
    assert victim.is_file() and len(COCO(str(paths[TRAIN])).getImgIds()) == 3


class Interrupted(Exception):
    pass


def test_an_interrupted_write_leaves_no_dataset_that_looks_complete(tmp_path, monkeypatch):
    root = tmp_path / "d"
    write_synthetic_dataset(root, 3, 2, SEED, (128, 128))
    old_marker = (root / MARKER_NAME).read_text()
    real = synthetic.render_synthetic_image

    def failing(seed, split, index, image_size, **scene):
        if split == VAL:
            raise Interrupted
        return real(seed, split, index, image_size, **scene)

    monkeypatch.setattr(synthetic.writer, "render_synthetic_image", failing)  # where the writer looks it up
    with pytest.raises(Interrupted):
        write_synthetic_dataset(root, 5, 2, SEED + 1, (128, 128))
    # The old data set is still whole and still says what it is; no half-written folder is left.
    assert (root / MARKER_NAME).read_text() == old_marker
    assert len(list((root / TRAIN).glob("*.jpg"))) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.lock", "d"]
    with pytest.raises(Interrupted):
        write_synthetic_coco(tmp_path / "plain", VAL, 2, SEED)
    assert not (tmp_path / "plain" / "annotations" / f"person_keypoints_{VAL}.json").exists()
    assert not (tmp_path / "plain" / VAL).exists()


def test_a_folder_that_is_not_ours_is_never_replaced(tmp_path):
    root = tmp_path / "precious"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="new or empty folder"):
        write_synthetic_dataset(root, 2, 1, SEED, (128, 128))
    assert (root / "notes.txt").read_text() == "keep me"
    (root / TRAIN).mkdir()
    (root / TRAIN / "000000000139.jpg").write_bytes(b"a real image")
    with pytest.raises(FileExistsError, match="did not write"):
        write_synthetic_coco(root, TRAIN, 2, SEED)
    assert (root / TRAIN / "000000000139.jpg").read_bytes() == b"a real image"


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "../escape"}, "split="),
    ({"split": ""}, "split="),
    ({"num_images": -1}, "num_images="),
    ({"num_images": 2.5}, "num_images="),
    ({"seed": -3}, "seed="),
    ({"image_size": (32, 256)}, "image_size="),
    ({"image_size": 256}, "image_size="),
    ({"people": (0, 2)}, "people="),
    ({"people": (3, 2)}, "people="),
    ({"people": (1, 9)}, "people="),
    ({"heights": (0.5, 1.5)}, "heights="),
    ({"heights": "tall"}, "heights="),
])
def test_bad_arguments_are_explained(tmp_path, kwargs, message):
    args = {"out_dir": tmp_path, "split": VAL, "num_images": 1, "seed": 0, "image_size": (128, 128)} | kwargs
    with pytest.raises(ValueError, match=message):
        write_synthetic_coco(**args)
    assert not any(tmp_path.iterdir())


def test_same_split_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="two different names"):
        write_synthetic_dataset(tmp_path, 1, 1, 0, train_split="x", val_split="x")


@pytest.mark.parametrize("split", [TRAIN, VAL, "test2017", "minival"])
def test_image_ids_fit_coco_file_names(split):
    assert 1000 <= split_code(split) <= 9999
    assert len(f"{image_id(split, synthetic.MAX_IMAGES - 1):012d}") == 12
    assert image_id(split, synthetic.MAX_IMAGES - 1) // 1_000_000 == image_id(split, 0) // 1_000_000
    with pytest.raises(ValueError, match="num_images="):
        write_synthetic_coco("/nonexistent-never-written", split, synthetic.MAX_IMAGES + 1, 0)
