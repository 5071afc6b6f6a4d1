"""A model on a data split: COCO results of its decoded people, then COCOeval's metrics.

`evaluate_model` runs the network over a split, decodes people, maps them back
to image pixels and scores them with pycocotools (`pgnet.evaluation.coco_eval`).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from pgnet.codec.decode import coco_results
from pgnet.config import EvalConfig
from pgnet.data.dataset import CocoKeypoints, collate_samples
from pgnet.errors import DataError
from pgnet.evaluation.coco_eval import evaluate
from pgnet.progress import progress_bar
from pgnet.runtime import autocast


@torch.no_grad()
def predict_coco(model: nn.Module, images: torch.Tensor, meta: dict[str, torch.Tensor],
                 cfg: EvalConfig, precision: str = "fp32") -> list[dict]:
    """COCO results (image pixels) for a batch; with `cfg.flip_test` the mirrored image is averaged in.
    `precision` as `train.precision` (the heads' outputs are float32 either way)."""
    with autocast(precision, images.device):
        outputs = model(images)
        flipped = model(images.flip(-1)) if cfg.flip_test else None
    return coco_results(outputs, meta["image_id"].tolist(), meta["inv_affine"], cfg, flipped_outputs=flipped)


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
        raise DataError(f"no image of {dataset.annotation_file} could be read for evaluation")
    metrics = evaluate(dataset.annotation_file, results, img_ids=evaluated)
    metrics["eval/images"] = float(len(evaluated))
    metrics["eval/skipped_images"] = float(skipped)
    return metrics, results
