"""Bad exports and bad exported files: a clear PGNetError naming what to do, before any work or file is made.

Arguments are checked before the checkpoint is read (a bad size with a missing checkpoint is a size error);
a file that is not what `pgnet export` writes is refused when it is loaded, before it runs."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from pgnet.config import Config
from pgnet.errors import CheckpointError, ConfigError, MissingFileError
from pgnet.export import export_model
from pgnet.export.common import CONFIG_KEY
from pgnet.export.torchscript import jit_deprecation_quiet
from pgnet.predict import Predictor


@pytest.mark.parametrize("out, kwargs, error, message", [
    ("m.onnx", {"input_size": (100, 64)}, ConfigError,
     "--input-size 100 64: height and width must be positive multiples of 32, the network's stride (e.g. 96 64)"),
    ("m.onnx", {"input_size": (0, 64)}, ConfigError, "must be positive multiples of 32"),
    ("m.onnx", {"format": "tflite"}, ConfigError,
     "--format tflite is not an export format; use one of: onnx, torchscript"),
    ("m.bin", {}, ConfigError, "give --format (onnx, torchscript) or an --out ending in .onnx, .ts, .torchscript"),
    ("m.onnx", {"format": "torchscript"}, ConfigError, "a torchscript file must end in .ts or .torchscript"),
    ("missing/m.onnx", {}, MissingFileError, "does not exist; create it or name another --out"),
])
def test_bad_arguments_are_refused_before_the_checkpoint_is_read(tmp_path, out, kwargs, error, message):
    with pytest.raises(error) as err:
        export_model(tmp_path / "no_such_checkpoint.pt", tmp_path / out, **kwargs)
    assert message in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_an_out_that_is_a_folder_is_refused(tmp_path):
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(ConfigError, match="is a folder; name the file to write"):
        export_model(tmp_path / "no_such_checkpoint.pt", tmp_path / "model.onnx")


@pytest.mark.parametrize("make, error, message", [
    (lambda d: d / "nope.pt", MissingFileError, "not found; pass a file written by `pgnet train`"),
    (lambda d: d, MissingFileError, "is a folder; pass a checkpoint file"),
    (lambda d: _write(d / "junk.pt", b"junk\n" * 7), CheckpointError, "is not a torch checkpoint"),
    (lambda d: _write(d / "random.pt", bytes(range(256)) * 3), CheckpointError, "pass a checkpoint"),
    (lambda d: _save(d / "weights.pt", {"conv.weight": torch.zeros(1)}), CheckpointError,
     "is not a PGNet checkpoint"),
])
def test_a_bad_checkpoint_is_a_checkpoint_error(tmp_path, make, error, message):
    source = tmp_path / "in"
    source.mkdir()
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        export_model(make(source), tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _onnx_file(path: Path, metadata: str | None, size: int = 64) -> Path:
    """A valid ONNX graph (images -> hm, Identity) that `pgnet export` did not write."""
    shape = [1, 3, size, size]
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["hm"])], "not_pgnet",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("hm", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    if metadata is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = CONFIG_KEY, metadata
    onnx.save(model, path)
    return path


def _script_file(path: Path) -> Path:
    """A TorchScript file of some other module, without the config `pgnet export` stores."""
    with jit_deprecation_quiet():
        torch.jit.save(torch.jit.trace(torch.nn.Conv2d(3, 1, 1), torch.zeros(1, 3, 8, 8)), str(path))
    return path


TINY_CONFIG = json.dumps(Config().to_dict())  # input 128x128


@pytest.mark.parametrize("make, error, message", [
    (lambda d: d / "missing.onnx", MissingFileError, "not found; pass a checkpoint (.pt) or a file `pgnet export`"),
    (lambda d: _write(d / "junk.onnx", b"not an onnx model"), CheckpointError,
     "is not an ONNX model onnxruntime can run (Load model from"),
    (lambda d: _onnx_file(d / "plain.onnx", None), CheckpointError,
     "holds no PGNet config (pgnet.config): it was not written by `pgnet export`; export the checkpoint again"),
    (lambda d: _onnx_file(d / "bad_json.onnx", "{not json"), CheckpointError, "its stored PGNet config cannot be used"),
    (lambda d: _onnx_file(d / "bad_key.onnx", json.dumps({"model": {"depth": 3}})), CheckpointError,
     "its stored PGNet config cannot be used"),
    (lambda d: _onnx_file(d / "other_size.onnx", TINY_CONFIG), CheckpointError,
     "takes images [1, 3, 64, 64], not images [batch, 3, 128, 128] as its stored config says"),
    (lambda d: _onnx_file(d / "other_outputs.onnx", TINY_CONFIG, size=128), CheckpointError,
     "outputs hm, not the maps its config's network has"),
    (lambda d: _write(d / "junk.ts", b"\x00garbage" * 9), CheckpointError,
     "is not a TorchScript file torch can load (PytorchStreamReader failed reading zip archive"),
    (lambda d: _save(d / "checkpoint.ts", {"model": {}}), CheckpointError, "is not a TorchScript file torch can load"),
    (lambda d: _script_file(d / "conv.torchscript"), CheckpointError,
     "holds no PGNet config (pgnet.config): it was not written by `pgnet export`"),
])
def test_a_file_pgnet_export_did_not_write_is_refused_on_loading(tmp_path, make, error, message):
    with pytest.raises(error) as err:
        Predictor.load(make(tmp_path), "cpu")
    assert message in str(err.value)
    assert "\n" not in str(err.value)
