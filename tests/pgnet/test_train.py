"""The single-process trainer `pgnet.train.train` on a tiny config: the run directory it writes, its
determinism for a seed, evaluation in the training precision, bad images as counted skips.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from pgnet.config import load_config
from pgnet.errors import ConfigError
from pgnet.evaluation import load_results, metric_names
from pgnet.models import build_model
from pgnet.run.metrics_log import read_jsonl
from pgnet.train import train
from tests.support.training import (
    STEPS_PER_EPOCH,
    TWO_EPOCHS,
    load,
    losses,
    same_weights,
    training_columns,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TERMS = ("hm", "box", "reg", "kps", "hm_hp", "hp_offset", "guide_hm", "guide_box")
CHECKPOINT_KEYS = {"model", "config", "epoch", "step"}
RESUMABLE_KEYS = {"optimizer", "scheduler"}  # checkpoint_last.pt only: checkpoint_best.pt is for inference


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
    expected_keys = {"step", "epoch", "loss", "lr", "images_per_s", "data/wait_s", "time"} | {f"loss/{t}" for t in TERMS}
    for r in records:
        assert set(r) == expected_keys
        assert all(math.isfinite(r[k]) for k in expected_keys)
        assert r["images_per_s"] > 0 and r["data/wait_s"] >= 0

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
    if name == "checkpoint_best.pt":
        assert not RESUMABLE_KEYS & set(ckpt)
        return
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


def test_accumulating_micro_batches_trains_the_same_model(trained, make_config):
    """`train.accumulate=4` runs each batch of 4 as 4 micro-batches of 1, gradients added up: with GroupNorm
    (no coupling between samples) the same losses and weights as whole batches, to float rounding. SGD: AdamW
    would turn a near-zero gradient's rounding into a whole step of either sign."""
    plain = ("model.norm=gn", "train.max_steps=3", "optim.name=sgd", "optim.lr=0.02")
    reference_dir, _ = trained(*plain)
    run_dir, _ = trained(*plain, "train.accumulate=4")
    got, want = read_jsonl(run_dir / "metrics.jsonl"), read_jsonl(reference_dir / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3]
    for a, b in zip(got, want):
        for key in (k for k in b if k.startswith("loss")):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
    ours, theirs = load(run_dir / "checkpoint_last.pt")["model"], load(reference_dir / "checkpoint_last.pt")["model"]
    assert max((ours[k] - theirs[k]).abs().max().item() for k in theirs if theirs[k].is_floating_point()) < 1e-5


@pytest.mark.parametrize("overrides, message", [
    (["train.accumulate=3"], "train.accumulate=3 must be >= 1 and divide train.batch_size=4"),
    (["train.accumulate=0"], "train.accumulate=0 must be >= 1"),
    (["train.accumulate=2", "pipeline.stages=2"], "train.accumulate is for the single-process trainer"),
])
def test_accumulate_must_divide_the_batch_and_is_single_process_only(make_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config(*overrides)


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
        features = model.decoder(model.neck(*model.backbone(images))[0])
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


def test_summary_is_json_serialisable(trained):
    run_dir, summary = trained(*TWO_EPOCHS)
    assert json.loads(json.dumps(summary)) == summary  # plain numbers, nothing lost on the way
    last = read_jsonl(run_dir / "evaluations.jsonl")[-1]
    assert (summary["step"], summary["epoch"]) == (last["step"], last["epoch"]) == (8, 2)
    assert summary["keypoints/AP"] == last["keypoints/AP"] and summary["train/skipped_images"] == 0
