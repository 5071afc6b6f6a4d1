"""The tests' tiny training configs, as `--set` overrides: small enough that a step takes milliseconds."""
from __future__ import annotations

from pathlib import Path

from pgnet.config import Config, load_config

TINY_TRAIN_IMAGES = 16  # 4 steps per epoch at batch 4
TINY_VAL_IMAGES = 4
TINY_IMAGE_SIZE = (96, 96)

# resnet18 with narrow CFFM/decoder/heads on 64x64 inputs: a training step takes a few ms on 2 cores.
TINY_OVERRIDES = [
    "model.backbone=resnet18", "model.norm=bn", "model.neck_channels=32", "model.decoder_channels=32",
    "model.head_channels=16", "data.input_size=[64, 64]", "data.max_people=8", "train.batch_size=4",
    "train.epochs=1", "train.log_every=1", "optim.name=adamw", "optim.lr=0.001", "optim.warmup_steps=2",
    "eval.max_images=4", "eval.batch_size=4", "tracking.mlflow=false",
]

# The pipeline tests' run: GroupNorm (no batch statistics, so micro-batches match one process), SGD, 3 steps
# of batch 8 on a synthetic set of its own.
PIPELINE_TINY = [
    "model.backbone=resnet18", "model.norm=gn", "model.neck_channels=32", "model.decoder_channels=32",
    "model.head_channels=16", "data.input_size=[64, 64]", "data.synthetic.train_images=24",
    "data.synthetic.val_images=4", "data.synthetic.image_size=[128, 128]", "train.batch_size=8",
    "train.epochs=1", "train.max_steps=3", "train.log_every=1", "optim.name=sgd", "optim.lr=0.02",
    "optim.warmup_steps=0", "eval.max_images=4", "tracking.mlflow=false", "pipeline.microbatches=4",
]


def pipeline_config(synthetic_dir: Path, *overrides: str) -> Config:
    """`PIPELINE_TINY` with its synthetic set under `synthetic_dir`, and more overrides."""
    return load_config(None, [*PIPELINE_TINY, f"data.synthetic_dir={synthetic_dir}", *overrides])
