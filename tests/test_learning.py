"""It learns: a tiny version of the bundled `cpu_small` recipe, trained briefly on synthetic people, gets better.

One short run (64 px inputs, a few hundred images): the training loss and its main terms fall, and key-point
and box AP on the held-out synthetic split end clearly above those of the same seeded model before training.
Every bound below comes from measured runs, with a safety margin (the figures are next to each constant).
"""
from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch

from pgnet.config import Config, load_config
from pgnet.engine import evaluate_model
from pgnet.metrics_log import EVALUATIONS_FILE, METRICS_FILE, read_jsonl
from pgnet.train import seeded_model, train, training_datasets

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# cpu_small shrunk to run in about a minute on one thread: the same optimiser, augmentation and heads.
TINY_LEARNER = [
    "model.cffm_channels=32", "model.decoder_channels=32", "model.head_channels=16",
    "data.input_size=[64, 64]", "data.synthetic.image_size=[128, 128]",
    "data.synthetic.train_images=256", "data.synthetic.val_images=16",
    "train.batch_size=16", "train.epochs=12", "train.eval_every=12", "train.log_every=50",
    "optim.warmup_steps=20", "eval.max_images=0", "tracking.mlflow=false",
]
STEPS = 192  # 12 epochs of 16 batches
WINDOW = 24  # steps averaged at each end of the loss curve
