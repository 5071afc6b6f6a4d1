"""Batch inference on Ray Data (`pgnet infer`): every image in gives one record out, the people are those the
single-process Predictor finds, and the results file scores as `pgnet eval` scores a model."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from pgnet.data.dataset import CocoKeypoints, coco_paths
from pgnet.data.sample import read_image
from pgnet.evaluation import evaluate
from pgnet.evaluation.inference import evaluate_model
from pgnet.predict import Predictor, load_for_inference
from pipelines.inference.batch import ImageJob, run_batch_inference
from tests.support.cli import run_cli
from tests.support.export import assert_same_people

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray", "one_thread")]


def test_a_folder_with_a_corrupt_image_gives_one_record_per_image(tiny_checkpoint, tiny_data, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(tiny_data / "val2017", folder)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    job = ImageJob.from_folder([folder])
    report = run_batch_inference(tiny_checkpoint, job, tmp_path / "results.json", replicas=2, batch_size=2,
                                 progress=False)
    assert (report.images, report.predicted) == (5, 5)
    assert [u["file"] for u in report.unreadable] == [str((folder / "broken.jpg").absolute())]
    assert "cannot decode the image" in report.unreadable[0]["reason"]
    assert json.loads((tmp_path / "results.json.report.json").read_text())["unreadable"] == report.unreadable

    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")  # the single-process reference
    expected = []
    for image_id, path in job.images:
        if not path.endswith("broken.jpg"):
            expected.extend(predictor.people([read_image(path)], [image_id])[0])
    results = json.loads((tmp_path / "results.json").read_text())
    assert expected
    assert_same_people(expected, results)
    assert report.people == len(results)


def test_a_coco_split_scores_as_the_model_evaluated_in_process(tiny_checkpoint, tiny_data, tmp_path, capsys):
    out = tmp_path / "results.json"
    code, stdout, _ = run_cli(capsys, "infer", "--model", tiny_checkpoint, "--data", tiny_data, "--split", "val2017",
                              "--out", out, "--replicas", 1, "--quiet")
    assert code == 0 and "4 of 4 images predicted" in stdout and f"--predictions {out}" in stdout
    ann_file, _ = coco_paths(tiny_data, "val2017")
    model, cfg = load_for_inference(tiny_checkpoint)
    cfg.eval.max_images = 0
    dataset = CocoKeypoints(tiny_data, "val2017", input_size=tuple(cfg.data.input_size),
                            max_people=cfg.data.max_people, train=False)
    metrics, results = evaluate_model(model, dataset, cfg.eval, torch.device("cpu"),
                                      progress=False)
    assert_same_people(results, json.loads(out.read_text()))
    scored = evaluate(ann_file, json.loads(out.read_text()))
    assert scored["keypoints/AP"] == pytest.approx(metrics["keypoints/AP"], abs=1e-9)


@pytest.mark.parametrize("args, message", [
    (["--images", "EMPTY"], "holds no images"),
    (["--images", "IMAGES", "--replicas", "0"], "--replicas and --batch-size must be 1 or more"),
    (["--images", "IMAGES", "--model-missing"], "not found; pass a checkpoint"),
])
def test_bad_input_is_one_clear_line(tiny_checkpoint, tiny_data, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    model = tmp_path / "missing.pt" if "--model-missing" in args else tiny_checkpoint
    args = [{"EMPTY": tmp_path / "empty", "IMAGES": tiny_data / "val2017"}.get(a, a) for a in args
            if a != "--model-missing"]
    code, _, err = run_cli(capsys, "infer", "--model", model, *args, "--out", tmp_path / "r.json", "--quiet")
    assert code == 2 and message in err and "Traceback" not in err
