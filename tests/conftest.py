"""Fixtures of every test: a tiny synthetic COCO set, the COCO sample, tiny configs (`tests.support`).

The data set is written once per session; a test that damages images works on its own copy.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch

from pgnet.config import Config, load_config
from pgnet.data.synthetic import write_synthetic_dataset
from tests.support.configs import (
    TINY_IMAGE_SIZE,
    TINY_OVERRIDES,
    TINY_TRAIN_IMAGES,
    TINY_VAL_IMAGES,
)
from tests.support.paths import COCO_SAMPLE


def pytest_collection_modifyitems(config, items):
    """Tests marked `last_in_session` (the multi-node cluster, which stops every Ray process on the
    machine) run after all others, so the session's local Ray starts once and is not restarted."""
    items.sort(key=lambda item: item.get_closest_marker("last_in_session") is not None)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one intra-op thread for a test module: the tiny models gain nothing from two, and two
    threads spinning on a machine shared with other jobs are many times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    """../shared/data/coco_sample: four COCO val2017 images, their annotations and example results."""
    if not (COCO_SAMPLE / "annotations/person_keypoints_val2017.json").is_file():
        pytest.fail(f"{COCO_SAMPLE} is missing; the tests expect the shared COCO sample beside the repository")
    return COCO_SAMPLE


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A COCO-layout synthetic set (train2017: 16 images, val2017: 4), written once per session."""
    root = tmp_path_factory.mktemp("tiny_data") / "synthetic"
    write_synthetic_dataset(root, TINY_TRAIN_IMAGES, TINY_VAL_IMAGES, seed=0, image_size=TINY_IMAGE_SIZE)
    return root


@pytest.fixture
def tiny_data_copy(tiny_data: Path, tmp_path: Path) -> Path:
    """A private copy of `tiny_data` that a test may damage."""
    return Path(shutil.copytree(tiny_data, tmp_path / "data"))


@pytest.fixture(scope="session")
def tiny_overrides(tiny_data: Path) -> list[str]:
    """`--set` values of the tiny training config on `tiny_data` (what `pgnet train --set` takes)."""
    return [*TINY_OVERRIDES, f"data.root={tiny_data}"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A weights-only checkpoint (as `checkpoint_best.pt`) of the tiny config's network with random weights
    whose output maps have clear peaks (`tests.support.export`): for the inference and export tests, which
    check that every path finds the same people, not what a network learned."""
    from tests.support.export import clear_peaks_checkpoint
    return clear_peaks_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint") / "checkpoint_best.pt")[0]


@pytest.fixture(scope="session")
def tiny_network(tiny_checkpoint: Path):
    """`tiny_checkpoint`'s network as `pgnet predict --model CKPT` runs it (eval mode, on the CPU)."""
    from pgnet.predict import load_for_inference
    return load_for_inference(tiny_checkpoint)[0]


@pytest.fixture(scope="session")
def make_config(tiny_overrides: list[str]) -> Callable[..., Config]:
    """`make_config("train.seed=1", ..., data_root=None)`: the tiny config with more overrides."""
    def make(*overrides: str, data_root: Path | None = None) -> Config:
        root = [f"data.root={data_root}"] if data_root is not None else []
        return load_config(None, [*tiny_overrides, *root, *overrides])
    return make
