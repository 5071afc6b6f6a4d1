"""TorchScript export: the traced file, loaded by `Predictor.load`, computes the checkpoint's maps and people
at any batch, and carries the run's config (its input size as exported)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from pgnet.export import export_model
from pgnet.export.common import CONFIG_FILE, max_abs_difference
from pgnet.export.torchscript import jit_deprecation_quiet
from pgnet.predict import Predictor, load_for_inference
from tests.support.export import (
    MAP_TOLERANCE,
    assert_same_people,
    output_maps,
    sample_images,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def script_file(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ts") / "tiny.ts"
    report = export_model(tiny_checkpoint, out, "torchscript")
    assert report.path == out and report.format == "torchscript" and report.input_size == (64, 64)
    assert report.max_abs_difference <= MAP_TOLERANCE
    return out


@pytest.fixture(scope="module")
def images(tiny_data, coco_sample) -> list[Image.Image]:
    return sample_images(tiny_data, coco_sample)


@pytest.mark.parametrize("batch", [1, 3])
def test_traced_file_computes_the_checkpoints_maps_at_any_batch(script_file, tiny_network, batch):
    loaded = Predictor.load(script_file, "cpu")
    assert loaded.name == "torchscript"
    inputs = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
    got, want = output_maps(loaded.forward, inputs), output_maps(tiny_network, inputs)
    assert list(got) == list(tiny_network.output_names)
    assert all(got[k].shape == want[k].shape for k in want)
    assert max_abs_difference(got, want) <= MAP_TOLERANCE


def test_traced_file_on_real_images_letterboxed(script_file, tiny_network, images):
    loaded = Predictor.load(script_file, "cpu")
    inputs, _ = loaded.prepare(images)
    assert max_abs_difference(output_maps(loaded.forward, inputs), output_maps(tiny_network, inputs)) <= MAP_TOLERANCE


def test_traced_file_finds_the_checkpoints_people(script_file, tiny_checkpoint, images):
    assert_same_people([p for people in Predictor.load(tiny_checkpoint, "cpu").people(images) for p in people],
                       [p for people in Predictor.load(script_file, "cpu").people(images) for p in people])


def test_traced_file_carries_the_runs_config(script_file, tiny_checkpoint):
    _, cfg = load_for_inference(tiny_checkpoint)
    extra = {CONFIG_FILE: ""}
    with jit_deprecation_quiet():
        torch.jit.load(str(script_file), _extra_files=extra)
    assert json.loads(extra[CONFIG_FILE]) == cfg.to_dict()
    assert Predictor.load(script_file, "cpu").cfg.to_dict() == cfg.to_dict()


def test_input_size_sets_the_traced_size_and_the_stored_config(tiny_checkpoint, tiny_network, tmp_path, images):
    report = export_model(tiny_checkpoint, tmp_path / "wide.torchscript", input_size=(96, 128))  # format from suffix
    assert (report.format, report.input_size) == ("torchscript", (96, 128))
    loaded = Predictor.load(report.path, "cpu")
    assert loaded.input_size == (96, 128) and tuple(loaded.cfg.data.input_size) == (96, 128)
    inputs, _ = loaded.prepare(images)
    assert inputs.shape == (2, 3, 96, 128)
    got = output_maps(loaded.forward, inputs)
    assert got["hm"].shape == (2, 1, 24, 32)  # stride 4
    assert max_abs_difference(got, output_maps(tiny_network, inputs)) <= MAP_TOLERANCE
