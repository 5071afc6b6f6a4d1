"""ONNX files of a PGNet network, written by torch's dynamo exporter and run by onnxruntime.

The file holds the graph (input `images`, outputs named as `model.output_names`), every weight (no
external data) and the run's config in `metadata_props`. onnxruntime runs only the graph's standard
operators: loading registers no custom-op library and runs no Python from the file.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pgnet.atomic import atomic_path
from pgnet.config import Config
from pgnet.errors import CheckpointError
from pgnet.export.common import CONFIG_KEY, INPUT_NAME, check_model_file, config_from_json, config_json
from pgnet.models import PGNet, output_names
from pgnet.predict.predictor import Predictor
from pgnet.runtime import resolve_device

log = logging.getLogger("pgnet.export")

OPSET = 18  # the dynamo exporter's own opset (asked for 17, it builds 18 and converts down with a warning)
SUFFIXES = (".onnx",)
HOW_TO_FIX = "export the checkpoint again with `pgnet export --checkpoint CKPT --format onnx --out FILE.onnx`"


def write_onnx(model: PGNet, cfg: Config, out: Path, dynamic_batch: bool) -> None:
    """`model` (eval mode, on the CPU) at `cfg.data.input_size` as one self-contained ONNX file.

    Without `dynamic_batch` the batch is fixed at 1; `OnnxForward` runs a larger batch image by image."""
    import onnx
    h, w = cfg.data.input_size
    example = (torch.zeros(1, 3, h, w),)
    shapes = {INPUT_NAME: {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    with quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(model, example, None, input_names=[INPUT_NAME],
                                    output_names=list(model.output_names), opset_version=OPSET, dynamo=True,
                                    external_data=False, dynamic_shapes=shapes, verbose=False)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = CONFIG_KEY, config_json(cfg)
    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter's graph passes log each rewrite at INFO (`onnxscript`, `onnx_ir`): kept to warnings."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def onnx_session(path: str | Path, device: torch.device, threads: int | None = None):
    """An onnxruntime session on `path`: the CUDA provider first when `device` is CUDA and this onnxruntime
    has it, else the CPU; `threads` intra-op threads (default: torch's count), one inter-op thread."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            log.warning("this onnxruntime has no CUDA provider (install onnxruntime-gpu); running %s on the CPU",
                        path)
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail, ort_errors.NoSuchFile,
            ort_errors.InvalidArgument, ort_errors.NotImplemented, ort_errors.RuntimeException) as err:
        reason = str(err).splitlines()[0].split(" : ")[-1] if str(err) else type(err).__name__  # less the code
        raise CheckpointError(f"'{path}' is not an ONNX model onnxruntime can run ({reason}); {HOW_TO_FIX}") from None


class OnnxForward:
    """The Predictor's forward over an onnxruntime session: (B, 3, h, w) torch inputs -> dict of output maps
    as torch tensors on the inputs' device. A file exported with a fixed batch runs larger batches in chunks
    of that batch (the last one padded)."""

    def __init__(self, session, names: tuple[str, ...]):
        self.session, self.output_names = session, names
        batch = session.get_inputs()[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        step = self.fixed_batch or len(array)
        chunks = []
        for start in range(0, len(array), step):
            chunk = array[start:start + step]
            if len(chunk) < step:  # a fixed-batch graph takes exactly its batch
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            chunks.append(self.session.run(list(self.output_names), {INPUT_NAME: chunk}))
        return {name: torch.from_numpy(np.concatenate([c[i] for c in chunks])[:len(array)]).to(images.device)
                for i, name in enumerate(self.output_names)}


def load_onnx(path: str | Path, device: str = "auto", threads: int | None = None) -> Predictor:
    """A Predictor running `path` (written by `pgnet export`) on onnxruntime; its config is the one stored
    in the file."""
    path = check_model_file(path)
    target = resolve_device(device)
    session = onnx_session(path, target, threads)
    cfg = config_from_json(session.get_modelmeta().custom_metadata_map.get(CONFIG_KEY), path, HOW_TO_FIX)
    expected = (3, *cfg.data.input_size)
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or tuple(inputs[0].shape[1:]) != expected:
        found = ", ".join(f"{i.name} {i.shape}" for i in inputs)
        raise CheckpointError(f"'{path}' takes {found}, not {INPUT_NAME} [batch, {', '.join(map(str, expected))}] "
                              f"as its stored config says; {HOW_TO_FIX}")
    names = tuple(o.name for o in session.get_outputs())
    if set(names) != set(output_names(cfg.model.guidance)):
        raise CheckpointError(f"'{path}' outputs {', '.join(names)}, not the maps its config's network has "
                              f"({', '.join(output_names(cfg.model.guidance))}); {HOW_TO_FIX}")
    on_cuda = session.get_providers()[0] == "CUDAExecutionProvider"
    return Predictor(OnnxForward(session, names), cfg, target if on_cuda else torch.device("cpu"),
                     name="onnxruntime")
