"""One training step and the evaluation loop, shared by every trainer.

`evaluate_model` runs the network over a split, decodes people, maps them back
to image pixels and scores them with pycocotools (`pgnet.evaluation`).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from pgnet.codec.decode import coco_results
from pgnet.config import EvalConfig
from pgnet.data.dataset import CocoKeypoints, collate_samples
from pgnet.evaluation import evaluate
from pgnet.progress import progress_bar

log = logging.getLogger("pgnet.engine")


def to_device(tree: Any, device: torch.device) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.to(device, non_blocking=True)
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    return tree


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def set_memory_format(module: nn.Module, channels_last: bool) -> nn.Module:
    """`module` with its weights in NHWC ("channels last") layout when asked, else as it is. Its
    convolutions then compute in NHWC whatever the input's layout (oneDNN and cuDNN run faster so),
    and their outputs are NHWC too."""
    return module.to(memory_format=torch.channels_last) if channels_last else module


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The training forward pass's precision (`train.precision`): `bf16` computes convolutions in
    bfloat16 (AMX / AVX-512 BF16 on recent CPUs, tensor cores on GPUs); weights, optimiser state, the
    heads' output convs and the losses stay float32. Evaluation always runs in float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def predict_coco(model: nn.Module, images: torch.Tensor, meta: dict[str, torch.Tensor],
                 cfg: EvalConfig, precision: str = "fp32") -> list[dict]:
    """COCO results (image pixels) for a batch; with `cfg.flip_test` the mirrored image is averaged in.
    `precision` as `train.precision` (the heads' outputs are float32 either way)."""
    with autocast(precision, images.device):
        outputs = model(images)
        flipped = model(images.flip(-1)) if cfg.flip_test else None
    return coco_results(outputs, meta["image_id"].tolist(), meta["inv_affine"], flipped_outputs=flipped,
                        top_k=cfg.top_k, score_threshold=cfg.score_threshold, rescore=cfg.rescore,
                        snap_score_weight=cfg.snap_score_weight, snap_box_margin=cfg.snap_box_margin,
                        keypoint_refine=cfg.keypoint_refine)


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset: CocoKeypoints, cfg: EvalConfig, device: torch.device,
                   progress: bool = True, workers: int = 0, precision: str = "fp32"
                   ) -> tuple[dict[str, float], list[dict]]:
    """Key-point and box COCO metrics of `model` on `dataset` (built with train=False). `precision` is
    the forward pass's, as `train.precision`: a model trained in bf16 is evaluated in bf16, as it trained."""
    was_training = model.training
    model.eval()
    indices = range(len(dataset)) if cfg.max_images <= 0 else range(min(cfg.max_images, len(dataset)))
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=cfg.batch_size, shuffle=False,
                        collate_fn=collate_samples, num_workers=workers)
    results: list[dict] = []
    evaluated: list[int] = []
    skipped = 0
    for images, _, meta, num_bad in progress_bar(loader, enabled=progress, desc="evaluate", unit="batch"):
        skipped += num_bad
        if len(images) == 0:
            continue
        results.extend(predict_coco(model, images.to(device), meta, cfg, precision))
        evaluated.extend(meta["image_id"].tolist())
    model.train(was_training)
    if not evaluated:
        raise RuntimeError(f"no image of {dataset.annotation_file} could be read for evaluation")
    metrics = evaluate(dataset.annotation_file, results, img_ids=evaluated)
    metrics["eval/images"] = float(len(evaluated))
    metrics["eval/skipped_images"] = float(skipped)
    return metrics, results
