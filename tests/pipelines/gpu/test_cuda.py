"""The CUDA paths, for a machine with a GPU: `make test-gpu` runs them (marker `cuda`). Elsewhere every test is
collected and skipped with the reason. Each is small (a few steps of the tiny config): minutes on one GPU.

They cannot run on the project's CPU machines: they are written to the same contracts as the CPU tests
beside them, and kept as plain as those."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pgnet.predict import Predictor
from pgnet.run.metrics_log import read_jsonl
from pgnet.train import train
from tests.support.configs import pipeline_config

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(GPUS == 0, reason="no CUDA GPU on this machine (make test-gpu "
                                                                      "runs these where there is one)")]


def test_a_bf16_training_step_runs_on_cuda(make_config, tmp_path):
    summary = train(make_config("train.device=cuda", "train.precision=bf16", "train.max_steps=2"), tmp_path,
                    progress=False)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert summary["step"] == 2 and all(np.isfinite(r["loss"]) for r in records)


def test_sync_batchnorm_takes_torchs_cuda_path(make_config):
    """model.norm=syncbn on CUDA runs `nn.SyncBatchNorm` (a group of one rank: plain BN statistics)."""
    import torch.distributed as dist

    from pgnet.models import build_model
    from pgnet.models.sync_bn import SyncBatchNorm2d
    model = build_model(make_config("model.norm=syncbn").model).cuda().train()
    assert any(isinstance(m, SyncBatchNorm2d) for m in model.modules())
    if not dist.is_initialized():
        dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29512", rank=0, world_size=1)
    try:
        outputs = model(torch.randn(2, 3, 64, 64, device="cuda"))
        sum(v.float().mean() for v in outputs.values()).backward()
        assert all(v.is_cuda and torch.isfinite(v).all() for v in outputs.values())
    finally:
        dist.destroy_process_group()


@pytest.mark.ray
def test_a_one_stage_ray_train_run_uses_the_gpu(local_ray, synthetic_dir, tmp_path):
    from pipelines.training.launch import train_on_ray
    summary = train_on_ray(pipeline_config(synthetic_dir, "pipeline.stages=1", "ray.use_gpu=true"), tmp_path)
    assert summary["step"] == 3


@pytest.mark.ray
@pytest.mark.skipif(GPUS < 2, reason="the mixed gloo/NCCL backend needs two GPUs (one per stage)")
def test_a_two_stage_run_sends_activations_over_nccl(local_ray, synthetic_dir, tmp_path):
    from pipelines.training.launch import train_on_ray
    summary = train_on_ray(pipeline_config(synthetic_dir, "pipeline.stages=2", "ray.use_gpu=true"), tmp_path)
    assert summary["step"] == 3


def test_export_and_inference_on_cuda(tiny_checkpoint, tiny_data, tmp_path):
    """The checkpoint on CUDA finds the people it finds on the CPU; so does its TorchScript export."""
    from PIL import Image

    from pgnet.export import export_model
    image = Image.open(next((tiny_data / "val2017").glob("*.jpg"))).convert("RGB")
    on_cpu = Predictor.from_checkpoint(tiny_checkpoint, device="cpu").people([image])[0]
    on_gpu = Predictor.from_checkpoint(tiny_checkpoint, device="cuda").people([image])[0]
    assert [round(p["score"], 3) for p in on_gpu] == [round(p["score"], 3) for p in on_cpu]
    exported = export_model(tiny_checkpoint, tmp_path / "model.ts", "torchscript").path
    scripted = Predictor.load(exported, device="cuda").people([image])[0]
    assert json.dumps([round(p["score"], 3) for p in scripted]) == json.dumps([round(p["score"], 3) for p in on_cpu])
    assert Path(exported).is_file()
