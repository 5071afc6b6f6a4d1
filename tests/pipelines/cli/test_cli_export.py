"""`pgnet export` to ONNX and `pgnet predict --model FILE.onnx`: the file computes the checkpoint's maps on
onnxruntime (random and real images, any batch), carries its config, and finds the checkpoint's people.

Two exports serve every test (the dynamo exporter takes seconds): the default one (batch 1, the run's input
size) and a `--dynamic-batch --input-size 96 128` one.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from PIL import Image

from pgnet.export.common import max_abs_difference
from pgnet.predict import Predictor, load_for_inference
from pipelines.bench.model import eager_against_onnxruntime
from pipelines.cli import main
from tests.support.cli import run_cli
from tests.support.export import (
    MAP_TOLERANCE,
    assert_same_people,
    output_maps,
    sample_images,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def export(checkpoint: Path, out: Path, *options: str) -> str:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), *options]) == 0
    return stdout.getvalue()


@pytest.fixture(scope="module")
def fixed_file(tiny_checkpoint, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("fixed") / "tiny.onnx"
    return out, export(tiny_checkpoint, out, "--format", "onnx")


@pytest.fixture(scope="module")
def dynamic_file(tiny_checkpoint, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("dynamic") / "tiny.onnx"
    return out, export(tiny_checkpoint, out, "--dynamic-batch", "--input-size", "96", "128")


@pytest.fixture(scope="module")
def images(tiny_data, coco_sample) -> list[Image.Image]:
    return sample_images(tiny_data, coco_sample)


def test_export_says_what_it_wrote(fixed_file, dynamic_file):
    (fixed, fixed_out), (dynamic, dynamic_out) = fixed_file, dynamic_file
    assert f"wrote {fixed} (onnx, input 64x64, batch 1)" in fixed_out
    assert f"wrote {dynamic} (onnx, input 96x128, any batch)" in dynamic_out
    for out in (fixed_out, dynamic_out):
        assert float(re.search(r"matches the torch network to (\S+) \(max abs", out).group(1)) <= MAP_TOLERANCE
        assert "pgnet predict --model" in out


def test_onnx_file_is_self_contained_and_named(fixed_file, dynamic_file, tiny_checkpoint, tiny_network):
    _, cfg = load_for_inference(tiny_checkpoint)
    for (path, _), batch, size in ((fixed_file, 1, (64, 64)), (dynamic_file, "batch", (96, 128))):
        assert [p.name for p in path.parent.iterdir()] == [path.name]  # no external weights beside it
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        (images,) = model.graph.input
        dims = [d.dim_value or d.dim_param for d in images.type.tensor_type.shape.dim]
        assert images.name == "images" and dims == [batch, 3, *size]
        assert [o.name for o in model.graph.output] == list(tiny_network.output_names)
        stored = json.loads({p.key: p.value for p in model.metadata_props}["pgnet.config"])
        assert stored == {**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "input_size": list(size)}}


@pytest.mark.parametrize("which, batch", [("fixed_file", 1), ("fixed_file", 3), ("dynamic_file", 1),
                                          ("dynamic_file", 3)])
def test_onnxruntime_computes_the_checkpoints_maps(request, tiny_network, which, batch):
    """A fixed-batch file runs a batch of 3 image by image; a dynamic one in one call."""
    loaded = Predictor.load(request.getfixturevalue(which)[0], "cpu")
    assert loaded.name == "onnxruntime" and loaded.forward.fixed_batch == (1 if which == "fixed_file" else None)
    inputs = torch.randn(batch, 3, *loaded.input_size, generator=torch.Generator().manual_seed(batch))
    got, want = output_maps(loaded.forward, inputs), output_maps(tiny_network, inputs)
    assert list(got) == list(tiny_network.output_names)
    assert all(got[k].shape == want[k].shape for k in want)
    assert max_abs_difference(got, want) <= MAP_TOLERANCE


@pytest.mark.parametrize("which", ["fixed_file", "dynamic_file"])
def test_onnxruntime_on_real_images_letterboxed(request, tiny_network, images, which):
    loaded = Predictor.load(request.getfixturevalue(which)[0], "cpu")
    inputs, _ = loaded.prepare(images)
    assert inputs.shape[-2:] == loaded.input_size
    assert max_abs_difference(output_maps(loaded.forward, inputs), output_maps(tiny_network, inputs)) <= MAP_TOLERANCE


def test_predict_with_the_onnx_file_finds_the_checkpoints_people(capsys, tmp_path, fixed_file, tiny_checkpoint,
                                                                 tiny_data, coco_sample):
    alone = tmp_path / "elsewhere" / "model.onnx"  # away from the tiny_checkpoint: the file is all it needs
    alone.parent.mkdir()
    shutil.copyfile(fixed_file[0], alone)
    images = [tiny_data / "val2017", coco_sample / "val2017"]
    results = {}
    for name, model in (("checkpoint", tiny_checkpoint), ("onnx", alone)):
        code, _, _ = run_cli(capsys, "predict", "--model", model, *images, "--out", tmp_path / name)
        assert code == 0
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
    assert len(results["checkpoint"]) > 20
    assert_same_people(results["checkpoint"], results["onnx"])
    assert sorted(p.name for p in (tmp_path / "onnx").glob("*.jpg")) == \
        sorted(p.name for p in (tmp_path / "checkpoint").glob("*.jpg"))


def test_bench_times_eager_against_onnxruntime(fixed_file, tiny_checkpoint, tiny_network):
    lines: list[str] = []
    _, cfg = load_for_inference(tiny_checkpoint)
    results = eager_against_onnxruntime(tiny_network, cfg, fixed_file[0], batch=1, rounds=3, threads=1,
                                        print_fn=lines.append)
    assert set(results) == {"onnx_max_abs_difference", "torch_eager_fp32_ms", "onnxruntime_fp32_ms",
                            "ort_over_eager_fp32"}  # the tiny config runs in fp32: no second eager row
    assert results["onnx_max_abs_difference"] <= MAP_TOLERANCE
    assert all(results[k] > 0 for k in ("torch_eager_fp32_ms", "onnxruntime_fp32_ms", "ort_over_eager_fp32"))
    assert any(re.match(rf"\s+onnxruntime fp32\s+{results['onnxruntime_fp32_ms']:.1f} ms/batch", line)
               for line in lines)
    assert lines[-1] == (f"onnxruntime / torch eager fp32 latency: {results['ort_over_eager_fp32']:.2f} "
                         "(median of the rounds' ratios)")


@pytest.mark.parametrize("out, options, message", [
    ("m.onnx", ["--input-size", "100", "64"], "--input-size 100 64: height and width must be positive multiples of 32"),
    ("m.onnx", ["--format", "tflite"], "--format tflite is not an export format; use one of: onnx, torchscript"),
    ("missing/m.onnx", [], "does not exist; create it or name another --out"),
])
def test_export_errors_are_one_line(capsys, tmp_path, tiny_checkpoint, out, options, message):
    code, _, err = run_cli(capsys, "export", "--checkpoint", tiny_checkpoint, "--out", tmp_path / out, *options)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pgnet export: error: ") and message in lines[0]


def test_export_of_a_corrupt_checkpoint_is_one_line(capsys, tmp_path):
    junk = tmp_path / "checkpoint_best.pt"
    junk.write_bytes(b"junk\n" * 7)
    code, _, err = run_cli(capsys, "export", "--checkpoint", junk, "--out", tmp_path / "m.onnx")
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (f"pgnet export: error: '{junk}' is not a torch checkpoint (its bytes are not a torch "
                           "save); pass a checkpoint written by `pgnet train`")
