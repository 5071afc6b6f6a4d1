"""Tests of the `pgnet` sub-commands' happy paths (train, eval, predict, data, bench), called in-process and
once as the installed script, each checked against the library call it wraps."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from pycocotools.coco import COCO

from pgnet.config import EvalConfig
from pgnet.evaluation import evaluate, load_results, metric_names
from pgnet.predict import Predictor, drawn_file_names, image_ids
from pgnet.run.metrics_log import read_jsonl
from tests.support.cli import SCRIPT, run_cli
from tests.support.videos import (
    assert_same_people,
    read_video,
    sliding_frames,
    write_video,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN_SET = "train2017"
VAL_SET = "val2017"


# --- the installed script --------------------------------------------------------------------------

def test_console_script_is_installed():
    out = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for command in ("train", "eval", "predict", "data", "bench"):
        assert command in out.stdout


# --- data synth ------------------------------------------------------------------------------------

def test_data_synth_writes_the_coco_layout(capsys, tmp_path):
    out = tmp_path / "synth"
    code, stdout, _ = run_cli(capsys, "data", "synth", "--out", out, "--images", 3, "--val-images", 2,
                              "--seed", 5, "--size", "64x96")
    assert code == 0
    for split, count in ((TRAIN_SET, 3), (VAL_SET, 2)):
        ann = out / "annotations" / f"person_keypoints_{split}.json"
        assert str(ann) in stdout
        coco = COCO(str(ann))
        assert len(coco.getImgIds()) == count
        files = sorted((out / split).glob("*.jpg"))
        assert [f.name for f in files] == sorted(img["file_name"] for img in coco.loadImgs(coco.getImgIds()))
        for f in files:
            with Image.open(f) as img:
                assert img.size == (96, 64)  # (width, height) for --size 64x96 (height x width)
        assert all(len(a["keypoints"]) == 51 for a in coco.loadAnns(coco.getAnnIds()))
    assert json.loads((out / "pgnet_synthetic.json").read_text())["seed"] == 5


def test_data_synth_seed_decides_the_images(capsys, tmp_path):
    def first_image(seed: int) -> bytes:
        out = tmp_path / f"seed{seed}"
        assert run_cli(capsys, "data", "synth", "--out", out, "--images", 1, "--val-images", 1,
                       "--seed", seed, "--size", 64)[0] == 0
        return next((out / TRAIN_SET).glob("*.jpg")).read_bytes()
    assert first_image(1) != first_image(2)


# --- eval --------------------------------------------------------------------------------------------

def test_eval_results_file_prints_a_table_and_writes_evaluate_metrics(capsys, tmp_path, coco_sample):
    gt = coco_sample / "annotations/person_keypoints_val2017.json"
    results = coco_sample / "annotations/example_keypoint_results.json"
    out = tmp_path / "metrics" / "sample.json"
    code, stdout, _ = run_cli(capsys, "eval", "--annotations", gt, "--predictions", results, "--out", out)
    assert code == 0
    written = json.loads(out.read_text())
    assert written == evaluate(gt, results)
    assert set(written) == set(metric_names(["keypoints"]))  # the example results carry no boxes
    assert "Key points (OKS)" in stdout
    assert re.search(r"keypoints/AP\s+%.1f" % (100 * written["keypoints/AP"]), stdout)


def test_eval_checkpoint_equals_the_trainers_evaluation(capsys, tmp_path, cli_run, tiny_data):
    out = tmp_path / "eval.json"
    results = tmp_path / "results.json"
    code, stdout, _ = run_cli(capsys, "eval", "--checkpoint", cli_run / "checkpoint_last.pt", "--data", tiny_data,
                              "--split", VAL_SET, "--out", out, "--results-out", results, "--quiet")
    assert code == 0
    metrics = json.loads(out.read_text())
    trainer = read_jsonl(cli_run / "evaluations.jsonl")[-1]
    # This barely trained model's centre heatmap is nearly flat: which of its equal-looking people
    # fill the last top-k slots can turn on float noise: it moved box AP50 by 1.7e-4 in one run.
    assert {k: metrics[k] for k in metric_names()} == pytest.approx({k: trainer[k] for k in metric_names()},
                                                                    abs=1e-3, rel=0)
    assert metrics["eval/images"] == 4
    assert "Boxes (IoU)" in stdout
    assert evaluate(tiny_data / "annotations/person_keypoints_val2017.json", results) == \
        {k: metrics[k] for k in metric_names()}


def test_eval_set_changes_the_checkpoints_decoding(capsys, tmp_path, cli_run, tiny_data):
    import torch

    from pgnet.data.dataset import CocoKeypoints
    from pgnet.evaluation.inference import evaluate_model
    from pgnet.predict import load_for_inference
    results = tmp_path / "results.json"
    code, _, _ = run_cli(capsys, "eval", "--checkpoint", cli_run / "checkpoint_last.pt", "--data", tiny_data,
                         "--results-out", results, "--quiet", "--set", "eval.rescore=false",
                         "eval.snap_score_weight=0", "eval.score_threshold=0", "eval.keypoint_refine=centroid")
    assert code == 0
    model, cfg = load_for_inference(cli_run / "checkpoint_last.pt")
    cfg.eval.rescore, cfg.eval.snap_score_weight, cfg.eval.score_threshold = False, 0.0, 0.0
    cfg.eval.keypoint_refine = "centroid"
    dataset = CocoKeypoints(tiny_data, VAL_SET, input_size=tuple(cfg.data.input_size),
                            max_people=cfg.data.max_people, train=False)
    precision = cfg.train.precision  # `pgnet eval` runs the forward pass as the model trained
    _, want = evaluate_model(model, dataset, cfg.eval, torch.device("cpu"), progress=False, precision=precision)
    got = json.loads(results.read_text())
    assert len(got) == len(want) > 0
    assert got == json.loads(json.dumps(want))
    _, defaults = evaluate_model(model, dataset, EvalConfig(score_threshold=0.0), torch.device("cpu"), progress=False,
                                 precision=precision)
    rescored = json.loads(json.dumps(defaults))
    assert rescored != got  # the defaults decode otherwise: the override took effect
    cfg.eval.keypoint_refine = "offset"
    _, by_offsets = evaluate_model(model, dataset, cfg.eval, torch.device("cpu"), progress=False,
                                   precision=precision)
    assert [r["bbox"] for r in by_offsets] == [r["bbox"] for r in want]  # the same people...
    assert [r["keypoints"] for r in by_offsets] != [r["keypoints"] for r in want]  # ...placed otherwise


# --- predict -----------------------------------------------------------------------------------------

def test_predict_draws_images_and_writes_coco_results(capsys, tmp_path, cli_run, tiny_data, coco_sample):
    images = [sorted((tiny_data / VAL_SET).glob("*.jpg"))[0], coco_sample / "val2017/000000000785.jpg"]
    out = tmp_path / "predictions"
    code, stdout, _ = run_cli(capsys, "predict", "--checkpoint", cli_run / "checkpoint_best.pt", *images,
                              "--out", out, "--score-threshold", 0.0)
    assert code == 0 and str(out) in stdout
    for image in images:
        drawn = out / f"{image.stem}_pgnet.jpg"
        with Image.open(drawn) as d, Image.open(image) as original:
            assert d.size == original.size
    results = load_results(out / "results.json", image_ids=[int(image.stem) for image in images])
    raw = json.loads((out / "results.json").read_text())
    assert len(results) == len(raw)
    assert {r["file_name"] for r in raw} <= {p.name for p in images}
    assert all(len(r["keypoints"]) == 51 and len(r["bbox"]) == 4 for r in results)


def test_predictions_on_a_coco_folder_are_scored_against_their_annotations(capsys, tmp_path, cli_run, coco_sample):
    folder = coco_sample / "val2017"
    out = tmp_path / "predictions"
    assert run_cli(capsys, "predict", "--checkpoint", cli_run / "checkpoint_best.pt", folder, "--out", out)[0] == 0
    drawn = sorted(p.name for p in out.glob("*_pgnet.jpg"))
    assert drawn == sorted(f"{p.stem}_pgnet.jpg" for p in folder.glob("*.jpg"))
    gt = coco_sample / "annotations" / "person_keypoints_val2017.json"
    code, stdout, _ = run_cli(capsys, "eval", "--annotations", gt, "--predictions", out / "results.json",
                              "--out", tmp_path / "metrics.json")
    assert code == 0 and "keypoints/AP" in stdout
    assert {r["image_id"] for r in json.loads((out / "results.json").read_text())} \
        <= {image["id"] for image in json.loads(gt.read_text())["images"]}


@pytest.mark.parametrize("names, ids", [
    (["000000000785.jpg", "a/000000040083.png"], [785, 40083]),  # COCO file names: their ids
    (["000000000785.jpg", "photo.jpg"], [1, 2]),  # a name that is not a number: 1..N
    (["a/0007.jpg", "b/7.jpg"], [1, 2]),  # the same number twice: 1..N
    (["٣.jpg"], [1]),  # digits of another script are not COCO ids
])
def test_predict_image_ids(names, ids):
    assert image_ids([Path(n) for n in names]) == ids


def test_predict_keeps_images_of_the_same_name_apart(tmp_path):
    paths = [Path("a/000000000785.jpg"), Path("b/000000000785.png"), Path("c/photo.jpg"), Path("000000000785_2.jpg")]
    assert drawn_file_names(paths) == ["000000000785_pgnet.jpg", "000000000785_2_pgnet.jpg", "photo_pgnet.jpg",
                                       "000000000785_2_2_pgnet.jpg"]  # its own name was taken by the second


def test_predict_skips_an_unreadable_image(capsys, tmp_path, cli_run, tiny_data, caplog):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    good = sorted((tiny_data / VAL_SET).glob("*.jpg"))[0]
    code, _, _ = run_cli(capsys, "predict", "--checkpoint", cli_run / "checkpoint_last.pt", junk, good,
                         "--out", tmp_path / "out")
    assert code == 0
    assert (tmp_path / "out" / f"{good.stem}_pgnet.jpg").exists()
    assert not (tmp_path / "out" / "junk_pgnet.jpg").exists()
    assert any("junk.jpg" in r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "WARNING"))


def test_predict_on_a_folder_of_images_and_videos_and_another_video(capsys, tmp_path, cli_run, tiny_data):
    folder = tmp_path / "media"
    folder.mkdir()
    images = sorted((tiny_data / VAL_SET).glob("*.jpg"))[:2]
    for image in images:
        shutil.copy(image, folder / image.name)
    frames = sliding_frames(sorted((tiny_data / TRAIN_SET).glob("*.jpg")), 10)
    videos = [write_video(folder / "walk.mp4", frames), write_video(tmp_path / "walk.mkv", frames[:4], codec="mpeg4")]
    out = tmp_path / "out"
    checkpoint = cli_run / "checkpoint_best.pt"
    code, stdout, _ = run_cli(capsys, "predict", "--checkpoint", checkpoint, folder, videos[1], "--out", out,
                              "--score-threshold", 0.0, "--quiet")
    assert code == 0
    assert stdout.splitlines() == [
        f"2 drawn image(s) and {out / 'results.json'} written to {out}",
        f"{out / 'walk_pgnet.mp4'} and {out / 'walk_pgnet.jsonl'} written (10 frames)",
        f"{out / 'walk_2_pgnet.mp4'} and {out / 'walk_2_pgnet.jsonl'} written (4 frames)"]  # the same stem twice
    assert {r["file_name"] for r in json.loads((out / "results.json").read_text())} <= {p.name for p in images}
    assert all((out / f"{image.stem}_pgnet.jpg").exists() for image in images)
    predictor = Predictor.load(checkpoint)
    for source, name in zip(videos, ["walk_pgnet", "walk_2_pgnet"]):
        decoded, times, rate, _ = read_video(source)
        drawn, _, drawn_rate, _ = read_video(out / f"{name}.mp4")
        assert (len(drawn), drawn[0].size, drawn_rate) == (len(decoded), decoded[0].size, rate)
        records = read_jsonl(out / f"{name}.jsonl")
        assert [(r["frame"], r["time"]) for r in records] == [(i, pytest.approx(t)) for i, t in enumerate(times)]
        for i, (record, frame) in enumerate(zip(records, decoded)):  # the run's own decoding settings
            assert_same_people(record["people"], predictor.people([frame], [i])[0])


def test_train_reports_skipped_images(capsys, tmp_path, tiny_overrides, tiny_data_copy):
    sorted((tiny_data_copy / TRAIN_SET).glob("*.jpg"))[0].write_bytes(b"garbage")
    code, stdout, _ = run_cli(capsys, "train", "--run-dir", tmp_path / "run", "--no-mlflow", "--quiet", "--set",
                              *tiny_overrides, f"data.root={tiny_data_copy}", "data.max_bad_fraction=0.1")
    assert code == 0
    assert "training images skipped (unreadable, named in the log): 1" in stdout


# --- train with MLflow ---------------------------------------------------------------------------

@pytest.mark.slow
def test_train_logs_a_finished_mlflow_run(capsys, tmp_path, monkeypatch, tiny_overrides):
    from mlflow.tracking import MlflowClient
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the working directory
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_dir = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "train", "--run-dir", run_dir, "--quiet", "--set", *tiny_overrides,
                              "tracking.mlflow=true", "tracking.experiment=cli-test")
    assert code == 0 and "steps: 4, epochs: 1" in stdout

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("cli-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "run"
    assert run.data.params["model.backbone"] == "resnet18"
    assert run.data.params["data.input_size"] == "[64, 64]"
    assert run.data.params["model.pretrained"] == "null"
    assert run.data.tags["pgnet.stages"] == "0"
    losses = client.get_metric_history(run.info.run_id, "loss")
    logged = read_jsonl(run_dir / "metrics.jsonl")
    assert sorted((m.step, m.value) for m in losses) == [(r["step"], r["loss"]) for r in logged]
    evaluation = read_jsonl(run_dir / "evaluations.jsonl")[-1]
    assert run.data.metrics["keypoints/AP"] == evaluation["keypoints/AP"]
    assert "loss/hm" in run.data.metrics and "lr" in run.data.metrics
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.jsonl", "evaluations.jsonl", "plots"} <= top
    assert "checkpoints" not in top  # the best checkpoint is the model's artifact, uploaded once
    assert {"plots/loss_curves.png", "plots/val_predictions.png"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    (output,) = run.outputs.model_outputs  # the best checkpoint as an MLflow model, linked to the run
    model = client.get_logged_model(output.model_id)
    assert (model.name, model.source_run_id, str(model.status)) == ("pgnet", run.info.run_id, "READY")
    assert "artifacts/checkpoint_best.pt" in {f.path for f in client.list_logged_model_artifacts(model.model_id,
                                                                                                 "artifacts")}
    # where to see it: the runs table of its experiment in the UI's Model training view
    assert re.search(rf"then open http://127\.0\.0\.1:5000/#/experiments/{experiment.experiment_id}/runs\?"
                     r"workflowType=machine_learning&viewStateShareKey=\w+", stdout), stdout


def test_resume_through_the_cli_finishes_the_run_in_its_mlflow_run(capsys, tmp_path, monkeypatch, tiny_overrides):
    from mlflow.tracking import MlflowClient
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracked = [*tiny_overrides, "tracking.mlflow=true", "tracking.experiment=cli-resume"]
    run_dir = tmp_path / "run"
    other = tmp_path / "other"  # another run in the same experiment: not the one to reopen
    assert run_cli(capsys, "train", "--run-dir", other, "--quiet", "--set", *tracked, "train.max_steps=1")[0] == 0
    assert run_cli(capsys, "train", "--run-dir", run_dir, "--quiet", "--set", *tracked, "train.max_steps=2")[0] == 0
    code, stdout, _ = run_cli(capsys, "train", "--run-dir", run_dir, "--quiet", "--resume", "--set", *tracked)
    assert code == 0 and "steps: 4, epochs: 1" in stdout
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cli-resume").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["other", "run"]  # the resume opened no run of its own
    run = next(r for r in runs if r.info.run_name == "run")
    assert run.info.status == "FINISHED"
    assert sorted({m.step for m in client.get_metric_history(run.info.run_id, "loss")}) == [1, 2, 3, 4]
    assert run.data.params["train.max_steps"] == "2"  # MLflow params are fixed at the start...
    assert run.data.tags["pgnet.resumed_with"] == "train.max_steps=0"  # ...so the change is a tag


# --- bench -------------------------------------------------------------------------------------------

def test_bench_model_prints_timings_and_a_ratio(capsys):
    code, stdout, _ = run_cli(capsys, "bench", "model", "--backbones", "resnet18", "--sizes", 64, "--repeats", 1,
                              "--threads", 1, "--compare-size", 64)
    assert code == 0
    assert re.search(r"pgnet-resnet18 forward\s+64x64", stdout)
    assert re.search(r"pgnet-resnet18 fwd\+bwd\s+64x64", stdout)
    ms = {name: float(value) for name, value in re.findall(
        r"^(pgnet-resnet50|keypointrcnn_resnet50_fpn) inference \((?:contiguous|channels_last)\)\s+64x64\s+"
        r"(\d+\.\d)", stdout, re.M)}
    assert set(ms) == {"pgnet-resnet50", "keypointrcnn_resnet50_fpn"}, stdout
    ratio = re.search(r"PGNet-R50 inference is (\d+\.\d+)x faster than Keypoint R-CNN", stdout)
    assert ratio and float(ratio.group(1)) == pytest.approx(ms["keypointrcnn_resnet50_fpn"] / ms["pgnet-resnet50"],
                                                            rel=0.05, abs=0.02)  # the printed ms are rounded


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
