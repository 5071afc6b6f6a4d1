"""Tests of the single-process trainer `pgnet.train.train` and the LR schedule, on a tiny config.

A run's files, its determinism for a seed, resuming (an interrupted run ends exactly as an
uninterrupted one; a run extended to more epochs follows the longer schedule from the resumed
step on), bad images as counted skips, and the schedule against hand-computed values.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from pgnet.config import ConfigError, OptimConfig, load_config
from pgnet.evaluation import load_results, metric_names
from pgnet.models import build_model
from pgnet.optim import build_scheduler, lr_factor
from pgnet.run.metrics_log import read_jsonl
from pgnet.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS_PER_EPOCH = 4  # 16 images, batch 4
TERMS = ("hm", "box", "reg", "kps", "hm_hp", "hp_offset", "guide_hm", "guide_box")
CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "config", "epoch", "step"}


class Interrupt(Exception):
    """Stands for a crash or Ctrl-C in the middle of a run."""


class InterruptAt:
    """Hook that stops the run at a step (on_step) or after an epoch's last checkpoint (on_checkpoint)."""

    def __init__(self, step: int | None = None, epoch_checkpoint: int | None = None):
        self.step, self.epoch_checkpoint, self.checkpoints = step, epoch_checkpoint, 0

    def on_step(self, record):
        if record["step"] == self.step:
            raise Interrupt(f"step {self.step}")

    def on_checkpoint(self, path, best):
        if not best and self.epoch_checkpoint is not None:
            self.checkpoints += 1
            if self.checkpoints == self.epoch_checkpoint:
                raise Interrupt(f"after epoch {self.epoch_checkpoint}")


def losses(records):
    return [r["loss"] for r in records]


def training_columns(records):
    """Everything a step record says about training (images_per_s is a wall-clock measurement)."""
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in records]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained(make_config, tmp_path_factory, one_thread):
    """`trained(*overrides)`: (run_dir, summary) of a finished run, trained once per module and config."""
    cache: dict[tuple[str, ...], tuple[Path, dict]] = {}

    def run(*overrides: str) -> tuple[Path, dict]:
        if overrides not in cache:
            run_dir = tmp_path_factory.mktemp("run")
            cache[overrides] = run_dir, train(make_config(*overrides), run_dir, progress=False)
        return cache[overrides]
    return run


TWO_EPOCHS = ("train.epochs=2",)


# --- the run directory -------------------------------------------------------------------------

def test_run_dir_holds_config_logs_and_checkpoints(trained, make_config):
    run_dir, summary = trained(*TWO_EPOCHS)
    cfg = make_config(*TWO_EPOCHS)
    assert {"config.yaml", "metrics.jsonl", "evaluations.jsonl", "checkpoint_last.pt",
            "checkpoint_best.pt"} <= {p.name for p in run_dir.iterdir()}
    assert load_config(run_dir / "config.yaml") == cfg

    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert [r["epoch"] for r in records] == [1] * STEPS_PER_EPOCH + [2] * STEPS_PER_EPOCH
    expected_keys = {"step", "epoch", "loss", "lr", "images_per_s"} | {f"loss/{t}" for t in TERMS}
    for r in records:
        assert set(r) == expected_keys
        assert all(math.isfinite(r[k]) for k in expected_keys)
        assert r["images_per_s"] > 0

    evaluations = read_jsonl(run_dir / "evaluations.jsonl")
    assert [(e["step"], e["epoch"]) for e in evaluations] == [(4, 1), (8, 2)]
    assert set(metric_names()) <= set(evaluations[-1])
    assert evaluations[-1]["eval/images"] == 4
    assert {k: summary[k] for k in metric_names()} == {k: evaluations[-1][k] for k in metric_names()}
    assert (summary["step"], summary["epoch"], summary["train/skipped_images"]) == (8, 2, 0)


@pytest.mark.parametrize("name", ["checkpoint_last.pt", "checkpoint_best.pt"])
def test_checkpoints_are_plain_dicts_that_rebuild_the_model(trained, make_config, name):
    run_dir, _ = trained(*TWO_EPOCHS)
    cfg = make_config(*TWO_EPOCHS)
    ckpt = load(run_dir / name)
    assert type(ckpt) is dict and CHECKPOINT_KEYS <= set(ckpt)
    assert ckpt["config"] == cfg.to_dict()
    evaluations = read_jsonl(run_dir / "evaluations.jsonl")
    if name == "checkpoint_last.pt":
        assert (ckpt["epoch"], ckpt["step"]) == (2, 8)
    else:  # the step of the best keypoints/AP (the first of equals)
        best = max(evaluations, key=lambda e: (e["keypoints/AP"], -e["step"]))
        assert ckpt["step"] == best["step"]
    model = build_model(cfg.model)
    model.load_state_dict(ckpt["model"])  # strict
    assert len(ckpt["optimizer"]["state"]) == sum(1 for p in model.parameters() if p.requires_grad)
    assert ckpt["scheduler"]["last_epoch"] == ckpt["step"]


def test_best_predictions_are_coco_results(trained):
    run_dir, _ = trained(*TWO_EPOCHS)
    results = load_results(run_dir / "val_predictions_best.json")
    assert all(r["category_id"] == 1 and len(r["keypoints"]) == 51 for r in results)


def test_logged_loss_is_the_weighted_sum_of_its_terms(trained, make_config):
    run_dir, _ = trained(*TWO_EPOCHS)
    loss = make_config(*TWO_EPOCHS).loss
    weights = {"hm": loss.hm_weight, "box": loss.box_weight, "reg": loss.reg_weight, "kps": loss.kps_weight,
               "hm_hp": loss.hm_hp_weight, "hp_offset": loss.hp_offset_weight,
               "guide_hm": loss.guidance_weight * loss.hm_weight, "guide_box": loss.guidance_weight * loss.box_weight}
    for r in read_jsonl(run_dir / "metrics.jsonl"):
        assert r["loss"] == pytest.approx(sum(weights[t] * r[f"loss/{t}"] for t in TERMS), rel=1e-5)


def test_logged_lr_follows_warmup_then_cosine(trained):
    run_dir, _ = trained(*TWO_EPOCHS)
    # lr 1e-3, 2 warm-up steps, cosine over the remaining 6 of 8 steps; the record holds the step's lr.
    expected = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * i / 6)) for i in range(6)]
    assert [r["lr"] for r in read_jsonl(run_dir / "metrics.jsonl")] == pytest.approx([1e-3 * f for f in expected])


def test_checkpoint_as_pretrained_continues_from_its_weights(trained, make_config):
    run_dir, _ = trained(*TWO_EPOCHS)
    cfg = make_config(*TWO_EPOCHS, f"model.pretrained={run_dir / 'checkpoint_last.pt'}")
    model = build_model(cfg.model)
    assert same_weights(model.state_dict(), load(run_dir / "checkpoint_last.pt")["model"])


# --- determinism ---------------------------------------------------------------------------------

def test_same_seed_same_losses_other_seed_other_losses(trained, make_config, tmp_path):
    reference_dir, _ = trained(*TWO_EPOCHS)
    reference = read_jsonl(reference_dir / "metrics.jsonl")
    train(make_config(*TWO_EPOCHS), tmp_path / "again", progress=False)
    again = read_jsonl(tmp_path / "again" / "metrics.jsonl")
    assert training_columns(again) == training_columns(reference)  # exact, every term of every step
    assert same_weights(load(tmp_path / "again" / "checkpoint_last.pt")["model"],
                        load(reference_dir / "checkpoint_last.pt")["model"])

    other_dir, _ = trained("train.epochs=1", "train.seed=1")
    other = read_jsonl(other_dir / "metrics.jsonl")
    assert len(other) == STEPS_PER_EPOCH
    assert all(a != b for a, b in zip(losses(other), losses(reference)))


def test_ram_cache_trains_the_same_model(trained):
    """`data.cache=ram` changes where the pixels come from, not what they are: the same losses, exactly."""
    reference_dir, _ = trained(*TWO_EPOCHS)
    run_dir, _ = trained(*TWO_EPOCHS, "data.cache=ram")
    got, want = read_jsonl(run_dir / "metrics.jsonl"), read_jsonl(reference_dir / "metrics.jsonl")
    assert training_columns(got) == training_columns(want)


def test_channels_last_trains_the_same_model(trained, make_config):
    """NHWC changes the order of float sums only: the first step (same weights) has the same loss to
    float tolerance, and later ones stay within 0.5%. (AdamW turns a near-zero gradient's float noise into
    a full step of either sign, so the runs drift apart a little: 0.19% by step 7 with fused AdamW; weights
    are not compared.) Its checkpoint loads into a model of the default layout."""
    reference_dir, _ = trained(*TWO_EPOCHS)
    run_dir, _ = trained(*TWO_EPOCHS, "train.channels_last=true")
    got, want = losses(read_jsonl(run_dir / "metrics.jsonl")), losses(read_jsonl(reference_dir / "metrics.jsonl"))
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    assert got == pytest.approx(want, rel=5e-3)
    weights = load(run_dir / "checkpoint_last.pt")["model"]
    stem = next(v for v in weights.values() if v.dim() == 4)
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()  # it was NHWC
    build_model(make_config().model).load_state_dict(weights)


def test_bf16_autocast_trains_close_to_float32(trained, make_config):
    """`train.precision=bf16` computes the forward pass in bfloat16 (8 significant bits): the first step,
    from the same weights, has fp32's loss to bf16 tolerance, and the run's losses stay close. Weights and
    optimiser state stay float32, so the checkpoint is the same kind of file."""
    reference_dir, _ = trained(*TWO_EPOCHS)
    run_dir, _ = trained(*TWO_EPOCHS, "train.precision=bf16")
    got, want = losses(read_jsonl(run_dir / "metrics.jsonl")), losses(read_jsonl(reference_dir / "metrics.jsonl"))
    assert got[0] == pytest.approx(want[0], rel=1e-2) and got[0] != want[0]  # bf16 did compute this step
    assert got == pytest.approx(want, rel=5e-2)
    checkpoint = load(run_dir / "checkpoint_last.pt")
    assert all(v.dtype == torch.float32 for v in checkpoint["model"].values() if v.is_floating_point())
    assert all(v.dtype == torch.float32 for group in checkpoint["optimizer"]["state"].values()
               for k, v in group.items() if k != "step")


def test_bf16_model_outputs_are_float32(make_config):
    """Under autocast the convolutions run in bfloat16, but the heads' output convs run in float32:
    regressed offsets of tens of output pixels keep their sub-pixel part (bf16 would round 20.3 to 20.25)."""
    model = build_model(make_config().model)
    images = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(images)
        features = model.decoder(model.cffm(*model.backbone(images))[0])
    assert features.dtype == torch.bfloat16  # the body did compute in bf16
    assert {name: v.dtype for name, v in outputs.items()} == {name: torch.float32 for name in outputs}


@pytest.mark.parametrize("precision, body_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_evaluation_runs_the_forward_pass_in_the_given_precision(make_config, tiny_data, precision, body_dtype):
    """The trainer evaluates with `precision=train.precision`, so a bf16 model is evaluated as it trains
    (and in about half the time on a CPU with bf16 units)."""
    from pgnet.data.dataset import CocoKeypoints
    from pgnet.evaluation.inference import evaluate_model
    cfg = make_config()
    model = build_model(cfg.model)
    seen = []
    model.decoder.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    dataset = CocoKeypoints(tiny_data, cfg.data.val_split, input_size=tuple(cfg.data.input_size), train=False)
    metrics, _ = evaluate_model(model, dataset, cfg.eval, torch.device("cpu"), progress=False, precision=precision)
    assert seen and set(seen) == {body_dtype}
    assert metrics["eval/images"] == len(dataset)


# --- resume --------------------------------------------------------------------------------------

@pytest.mark.parametrize("interrupt", [InterruptAt(epoch_checkpoint=1), InterruptAt(step=6)],
                         ids=["after-epoch-1", "mid-epoch-2"])
def test_interrupted_run_resumes_to_the_same_losses(trained, make_config, tmp_path, interrupt):
    reference_dir, _ = trained(*TWO_EPOCHS)
    cfg = make_config(*TWO_EPOCHS)
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(cfg, run_dir, progress=False, hooks=[interrupt])
    assert load(run_dir / "checkpoint_last.pt")["step"] == STEPS_PER_EPOCH
    summary = train(cfg, run_dir, resume=True, progress=False)
    assert summary["step"] == 2 * STEPS_PER_EPOCH
    # Steps 5 and 6 of the mid-epoch interruption were logged, dropped and redone: no duplicates.
    assert training_columns(read_jsonl(run_dir / "metrics.jsonl")) == \
        training_columns(read_jsonl(reference_dir / "metrics.jsonl"))
    assert read_jsonl(run_dir / "evaluations.jsonl") == read_jsonl(reference_dir / "evaluations.jsonl")
    assert same_weights(load(run_dir / "checkpoint_last.pt")["model"],
                        load(reference_dir / "checkpoint_last.pt")["model"])


def test_extending_a_finished_run_follows_the_longer_schedule(trained, make_config, tmp_path, caplog):
    """1 epoch, then resumed with 2: the new steps take the 2-epoch schedule's rates (a warning says the
    first epoch followed the 1-epoch schedule), so only the losses of epoch 1 match a 2-epoch run."""
    reference_dir, _ = trained(*TWO_EPOCHS)
    reference = read_jsonl(reference_dir / "metrics.jsonl")
    run_dir = tmp_path / "run"
    train(make_config("train.epochs=1"), run_dir, progress=False)
    with caplog.at_level(logging.WARNING, logger="pgnet.train"):
        train(make_config(*TWO_EPOCHS), run_dir, resume=True, progress=False)
    assert any("planned for 4 steps as one of 8" in r.getMessage() for r in caplog.records)
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    one_epoch = OptimConfig(lr=1e-3, warmup_steps=2)
    assert [r["lr"] for r in records[:4]] == pytest.approx([1e-3 * lr_factor(one_epoch, s, 4) for s in range(4)])
    assert [r["lr"] for r in records[4:]] == pytest.approx([r["lr"] for r in reference[4:]])
    assert records[4]["lr"] == pytest.approx(1e-3 * lr_factor(one_epoch, 4, 8)) and records[4]["lr"] > 0
    assert losses(records[:4]) == losses(reference[:4])
    assert losses(records[4:]) != losses(reference[4:])  # epoch 1 ran on other learning rates


@pytest.mark.slow
@pytest.mark.parametrize("first_leg", [("train.epochs=1",), ("train.epochs=2", "train.max_steps=6")],
                         ids=["one-epoch", "max-steps-mid-epoch"])
def test_extending_a_constant_schedule_run_equals_the_longer_run(trained, make_config, tmp_path, first_leg):
    """With a constant rate the schedule does not depend on the run's length: an extended run (also one
    that max_steps cut mid-epoch, which goes on with that epoch's batches) equals the longer run."""
    constant = ("optim.schedule=constant",)
    straight_dir, _ = trained(*constant, *TWO_EPOCHS)
    run_dir = tmp_path / "extended"
    train(make_config(*constant, *first_leg), run_dir, progress=False)
    summary = train(make_config(*constant, *TWO_EPOCHS), run_dir, resume=True, progress=False)
    assert (summary["step"], summary["epoch"]) == (8, 2)
    assert training_columns(read_jsonl(run_dir / "metrics.jsonl")) == \
        training_columns(read_jsonl(straight_dir / "metrics.jsonl"))
    assert same_weights(load(run_dir / "checkpoint_last.pt")["model"],
                        load(straight_dir / "checkpoint_last.pt")["model"])


# --- time limit ----------------------------------------------------------------------------------

class StepClock:
    """A clock that moves one second per training step and stands still otherwise, so that a
    time-limited run on it is as reproducible as one planned in steps."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def on_step(self, record):
        self.now += 1.0


TIMED = ("train.time_limit=0.25", "train.eval_every=100")  # 15 s of the step clock; train.epochs=1 plans 4 steps


@pytest.fixture(scope="module")
def timed_run(make_config, tmp_path_factory, one_thread):
    run_dir = tmp_path_factory.mktemp("timed") / "run"
    clock = StepClock()
    return run_dir, train(make_config(*TIMED), run_dir, progress=False, hooks=[clock], clock=clock)


def test_a_time_limit_fits_the_schedule_to_the_steps_that_fit(timed_run, make_config):
    """The run goes on past train.epochs=1 until its 15 s are up; from the first estimate (step 5) on, the
    rates are those of a 15-step run (2 warm-up steps, then a cosine to 0), and the last evaluation and
    checkpoint close the run mid-epoch."""
    run_dir, summary = timed_run
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert summary["step"] == len(records) == 15 and summary["epoch"] == 4  # 3 epochs of 4 steps, then 3
    lr = make_config().optim.lr
    cosine = [lr * 0.5 * (1 + math.cos(math.pi * (i - 2) / 13)) for i in range(5, 15)]
    assert [r["lr"] for r in records[5:]] == pytest.approx(cosine, rel=1e-9, abs=1e-15)
    assert [e["step"] for e in read_jsonl(run_dir / "evaluations.jsonl")] == [15]
    last = load(run_dir / "checkpoint_last.pt")
    assert (last["total_steps"], last["epoch_batches_done"], last["time_used"]) == (15, 3, 15.0)


def test_a_resumed_time_limited_run_spends_what_was_left(timed_run, make_config, tmp_path):
    reference_dir, _ = timed_run
    cfg, run_dir, clock = make_config(*TIMED), tmp_path / "run", StepClock()
    with pytest.raises(Interrupt):
        train(cfg, run_dir, progress=False, hooks=[clock, InterruptAt(epoch_checkpoint=2)], clock=clock)
    assert load(run_dir / "checkpoint_last.pt")["time_used"] == 8.0
    summary = train(cfg, run_dir, resume=True, progress=False, hooks=[clock], clock=clock)
    assert summary["step"] == 15
    assert training_columns(read_jsonl(run_dir / "metrics.jsonl")) == \
        training_columns(read_jsonl(reference_dir / "metrics.jsonl"))


def test_a_run_planned_in_epochs_resumed_with_a_time_limit_gets_the_whole_limit(trained, make_config, tmp_path):
    """Its checkpoint has spent no time limit: 5 steps are measured, then the 9 s fit 9 steps in all."""
    reference_dir, _ = trained(*TWO_EPOCHS)
    run_dir = Path(shutil.copytree(reference_dir, tmp_path / "run"))
    clock = StepClock()
    summary = train(make_config(*TWO_EPOCHS, "train.time_limit=0.15"), run_dir, resume=True, progress=False,
                    hooks=[clock], clock=clock)
    assert summary["step"] == 2 * STEPS_PER_EPOCH + 9 and clock.now == 9


def test_a_time_limit_is_for_the_single_process_trainer(make_config):
    with pytest.raises(ConfigError, match="single-process trainer"):
        make_config("train.time_limit=10", "pipeline.stages=2")
    with pytest.raises(ConfigError, match="train.time_limit"):
        make_config("train.time_limit=-1")


def test_existing_run_dir_without_resume_is_refused(trained, make_config):
    run_dir, _ = trained("train.epochs=1", "train.seed=1")
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(FileExistsError, match="already holds a run.*--resume"):
        train(make_config("train.epochs=1", "train.seed=1"), run_dir, progress=False)
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_resume_without_a_checkpoint_says_so(make_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint_last.pt.*drop --resume"):
        train(make_config(), tmp_path / "empty", resume=True, progress=False)


def test_resume_with_another_model_is_refused(trained, make_config, tmp_path):
    source, _ = trained("train.epochs=1", "train.seed=1")
    run_dir = Path(shutil.copytree(source, tmp_path / "run"))
    with pytest.raises(ValueError, match="different model config.*config.yaml"):
        train(make_config("train.epochs=1", "train.seed=1", "model.head_channels=8"), run_dir, resume=True,
              progress=False)


def test_resuming_weights_only_points_to_the_pipeline_shards(trained, make_config, tmp_path):
    """A finished pipeline run's checkpoint_last.pt holds weights only (its state is in stage shards)."""
    source, _ = trained("train.epochs=1", "train.seed=1")
    run_dir = Path(shutil.copytree(source, tmp_path / "run"))
    weights = {k: v for k, v in load(run_dir / "checkpoint_last.pt").items() if k not in ("optimizer", "scheduler")}
    torch.save(weights, run_dir / "checkpoint_last.pt")
    with pytest.raises(ValueError, match="finished pipeline run.*pipeline.stages >= 1"):
        train(make_config("train.epochs=2", "train.seed=1"), run_dir, resume=True, progress=False)


def test_an_empty_validation_split_is_refused_before_training(make_config, tmp_path):
    with pytest.raises(ValueError, match="validation split 'val2017'.*no images.*data.synthetic.val_images"):
        train(make_config("data.root=null", "data.synthetic.val_images=0", f"data.synthetic_dir={tmp_path / 'data'}"),
              tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_max_steps_ends_the_run_mid_epoch(make_config, tmp_path):
    summary = train(make_config(*TWO_EPOCHS, "train.max_steps=6"), tmp_path / "run", progress=False)
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 1, 1, 1, 2, 2]
    assert (summary["step"], summary["epoch"]) == (6, 2)
    ckpt = load(tmp_path / "run" / "checkpoint_last.pt")
    assert (ckpt["step"], ckpt["epoch"]) == (6, 2)


# --- bad images ------------------------------------------------------------------------------------

def corrupt(images: list[Path]) -> None:
    for path in images:
        path.write_bytes(b"\x00garbage, not a JPEG" * 8)


def test_a_bad_image_is_a_counted_logged_skip(make_config, tiny_data_copy, tmp_path, caplog):
    bad = sorted((tiny_data_copy / "train2017").glob("*.jpg"))[5]
    corrupt([bad])
    cfg = make_config("data.max_bad_fraction=0.1", data_root=tiny_data_copy)
    with caplog.at_level(logging.WARNING):
        summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["train/skipped_images"] == 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum(bad.name in m and "cannot decode" in m for m in messages) == 1
    assert any("1 of 16 training images" in m for m in messages)
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(records) == STEPS_PER_EPOCH and all(math.isfinite(r["loss"]) for r in records)


def test_too_many_bad_images_stop_the_run(make_config, tiny_data_copy, tmp_path):
    corrupt(sorted((tiny_data_copy / "train2017").glob("*.jpg"))[:3])  # 3 of 16 > 5%
    cfg = make_config("data.max_bad_fraction=0.05", data_root=tiny_data_copy)
    with pytest.raises(RuntimeError) as err:
        train(cfg, tmp_path / "run", progress=False)
    message = str(err.value)
    assert "3 of 16 images" in message and "data.max_bad_fraction=0.05" in message
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


# --- learning-rate schedule ---------------------------------------------------------------------

@pytest.mark.parametrize("cfg, total, expected", [
    # linear warm-up over 4 steps, then cosine from 1 to 0 over steps 4..12
    (OptimConfig(schedule="cosine", warmup_steps=4), 12,
     {0: 0.25, 1: 0.5, 2: 0.75, 3: 1.0, 4: 1.0, 6: (1 + math.sqrt(0.5)) / 2, 8: 0.5,
      10: (1 - math.sqrt(0.5)) / 2, 12: 0.0, 20: 0.0}),
    (OptimConfig(schedule="cosine", warmup_steps=0), 10,
     {0: 1.0, 5: 0.5, 9: (1 + math.cos(0.9 * math.pi)) / 2}),
    # step: x0.1 at 50% and 75% of 20 steps (10 and 15)
    (OptimConfig(schedule="step", warmup_steps=0, milestones=(0.5, 0.75), gamma=0.1), 20,
     {0: 1.0, 9: 1.0, 10: 0.1, 14: 0.1, 15: 0.01, 19: 0.01}),
    (OptimConfig(schedule="step", warmup_steps=2, milestones=(0.5,), gamma=0.5), 8,
     {0: 0.5, 1: 1.0, 2: 1.0, 3: 1.0, 4: 0.5, 7: 0.5}),
    (OptimConfig(schedule="constant", warmup_steps=3), 10, {0: 1 / 3, 1: 2 / 3, 2: 1.0, 3: 1.0, 9: 1.0}),
    # linear: from 1 at the end of the warm-up (step 2) to 0 at step 10
    (OptimConfig(schedule="linear", warmup_steps=2), 10, {0: 0.5, 1: 1.0, 2: 1.0, 4: 0.75, 6: 0.5, 9: 0.125,
                                                           10: 0.0, 15: 0.0}),
], ids=["cosine-warmup", "cosine", "step", "step-warmup", "constant-warmup", "linear-warmup"])
def test_lr_factor_hand_computed(cfg, total, expected):
    for step, factor in expected.items():
        assert lr_factor(cfg, step, total) == pytest.approx(factor, abs=1e-12), f"step {step}"


@pytest.mark.parametrize("schedule", ["cosine", "linear", "step", "constant"])
def test_scheduler_applies_the_factor_to_every_group(schedule):
    cfg = OptimConfig(lr=0.02, schedule=schedule, warmup_steps=3)
    params = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=cfg.lr)
    scheduler = build_scheduler(cfg, optimizer, total_steps=12)
    seen = []
    for _ in range(12):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    expected = [[0.02 * lr_factor(cfg, s, 12)] * 2 for s in range(12)]
    assert_close(torch.tensor(seen, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64))


def test_summary_is_json_serialisable(trained):
    run_dir, summary = trained(*TWO_EPOCHS)
    assert json.loads(json.dumps(summary)) == summary  # plain numbers, nothing lost on the way
    last = read_jsonl(run_dir / "evaluations.jsonl")[-1]
    assert (summary["step"], summary["epoch"]) == (last["step"], last["epoch"]) == (8, 2)
    assert summary["keypoints/AP"] == last["keypoints/AP"] and summary["train/skipped_images"] == 0
