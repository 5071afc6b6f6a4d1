"""It learns: a tiny version of the bundled `cpu_small` recipe, trained briefly on synthetic people, gets better.

One short run (96 px inputs, 192 images, 120 steps, under a minute on two threads): the training loss and each
of its main terms fall, and key-point AP and box AP on the held-out synthetic split end above those of the
same seeded model before training. The bundled `cpu_small` run (README) is where key-point AP is measured
at full size; at this size it is small but no longer zero (at 64 px a person spans too few output cells:
0.003 after the same steps). Every bound below comes from a measured run, with a margin (the figures are
next to each constant).
"""
from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch

from pgnet.config import Config, load_config
from pgnet.evaluation.inference import evaluate_model
from pgnet.run.build import seeded_model, training_datasets
from pgnet.run.layout import EVALUATIONS_FILE, METRICS_FILE
from pgnet.run.metrics_log import read_jsonl
from pgnet.train import train

pytestmark = pytest.mark.slow

# cpu_small shrunk to run in under a minute: the same model parts, optimiser, augmentation,
# precision, loss weights and decoding.
TINY_LEARNER = [
    "model.neck_channels=32", "model.decoder_channels=32", "model.head_channels=16",
    "data.input_size=[96, 96]", "data.synthetic.image_size=[192, 192]",
    "data.synthetic.train_images=192", "data.synthetic.val_images=32",
    "train.batch_size=16", "train.epochs=10", "train.eval_every=10", "train.log_every=50",
    "optim.warmup_steps=20", "eval.max_images=0", "tracking.mlflow=false",
]
STEPS = 120  # 10 epochs of 12 batches
WINDOW = 16  # steps averaged at each end of the loss curve
# last-window mean / first-window mean must be below these (measured: 0.45, 0.55, 0.63, 0.41, 0.55)
LOSS_DROP = {"loss": 0.7, "loss/hm": 0.75, "loss/box": 0.85, "loss/hm_hp": 0.65, "loss/kps": 0.75}
# measured, untrained -> trained: key-point AP 0.000 -> 0.022 (AP50 0.000 -> 0.135), box AP 0.002 -> 0.258
# (AP50 0.011 -> 0.762)
KEYPOINT_AP50_GAIN = 0.05
BOX_AP_GAIN = 0.15


@pytest.fixture(scope="module")
def learner(tmp_path_factory) -> tuple[Config, Path]:
    run_dir = tmp_path_factory.mktemp("learner")
    cfg = load_config("cpu_small", [*TINY_LEARNER, f"data.synthetic_dir={tmp_path_factory.mktemp('synthetic')}"])
    train(cfg, run_dir, progress=False)
    return cfg, run_dir


def test_the_training_loss_and_each_main_term_fall(learner):
    _, run_dir = learner
    records = read_jsonl(run_dir / METRICS_FILE)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for key, bound in LOSS_DROP.items():
        first = statistics.fmean(r[key] for r in records[:WINDOW])
        last = statistics.fmean(r[key] for r in records[-WINDOW:])
        assert last < bound * first, f"{key}: mean of the first {WINDOW} steps {first:.4f}, of the last {last:.4f}"


def test_keypoint_and_box_ap_on_held_out_images_rise_over_the_untrained_model(learner):
    cfg, run_dir = learner
    _, val_set = training_datasets(cfg, progress=False)
    before, _ = evaluate_model(seeded_model(cfg), val_set, cfg.eval, torch.device("cpu"), progress=False)
    after = read_jsonl(run_dir / EVALUATIONS_FILE)[-1]
    assert after["step"] == STEPS
    assert after["eval/images"] == cfg.data.synthetic.val_images  # the whole held-out split, none skipped
    assert after["bbox/AP"] >= before["bbox/AP"] + BOX_AP_GAIN, (before["bbox/AP"], after["bbox/AP"])
    assert after["bbox/AP50"] > before["bbox/AP50"]
    assert after["keypoints/AP"] > before["keypoints/AP"], (before["keypoints/AP"], after["keypoints/AP"])
    assert after["keypoints/AP50"] >= before["keypoints/AP50"] + KEYPOINT_AP50_GAIN, (
        before["keypoints/AP50"], after["keypoints/AP50"])
