"""What a run leaves in MLflow besides its metrics, read back from a real MLflow server (`tracked_sweep`):
its data sets as dataset inputs, its best checkpoint as a pyfunc model linked to the run (and the sweep's
best in the Model Registry), the machine-learning experiment kind, and the runs-table URL and view.

The model is loaded by `mlflow.pyfunc.load_model` in a separate process with a clean environment, outside
the repository, and must find the people `Predictor.people` finds.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import mlflow.artifacts
import numpy as np
import pytest
import yaml
from PIL import Image

from pgnet.config import ConfigError
from pgnet.data.records import load_coco_records
from pgnet.errors import DataError
from pgnet.predict import Predictor
from pipelines.sweeps.spec import load_sweep
from pipelines.sweeps.sweep import REGISTERED_TAG
from pipelines.tracking.datasets import summarize_annotations
from pipelines.tracking.models import best_evaluation, pip_requirements, run_model_id
from pipelines.tracking.pyfunc import COLUMNS, as_pil_images, people_table
from pipelines.tracking.runs import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from pipelines.tracking.ui import (
    VIEW_TAG_PREFIX,
    runs_table_url,
    save_runs_view,
    ui_instructions,
)
from tests.support.paths import COCO_SAMPLE_ANNOTATIONS, COCO_SAMPLE_IMAGES
from tests.support.tracking import REGISTERED_NAME, tiny_sweep_file

SPLITS = {"train": "train2017", "validation": "val2017"}


# --- data sets -------------------------------------------------------------------------------------------

def test_each_run_logs_its_training_and_validation_data(tracked_sweep, tiny_data):
    for run_id, _ in tracked_sweep.trials.values():
        inputs = tracked_sweep.client.get_run(run_id).inputs.dataset_inputs
        by_context = {tag.value: i.dataset for i in inputs for tag in i.tags if tag.key == "mlflow.data.context"}
        assert set(by_context) == set(SPLITS)
        for context, split in SPLITS.items():
            dataset, ann_file = by_context[context], tiny_data / "annotations" / f"person_keypoints_{split}.json"
            sha256 = hashlib.sha256(ann_file.read_bytes()).hexdigest()
            _, counts = load_coco_records(ann_file, tiny_data / split)  # the loader's own counts
            assert (dataset.name, dataset.digest, dataset.source_type) == (f"synthetic-{split}", sha256[:16], "local")
            assert json.loads(dataset.source) == {"uri": str(ann_file)}
            assert json.loads(dataset.profile) == {"split": split, "images": counts["images"],
                                                   "people": counts["people"], "crowd_regions": 0,
                                                   "annotation_sha256": sha256}


@pytest.mark.parametrize("layout", [{"indent": 2}, {"separators": (",", ":")}])
def test_annotation_counts_match_the_coco_loader(tmp_path, layout, monkeypatch):
    monkeypatch.setenv("PGNET_CACHE", str(tmp_path / "cache"))
    """The summary counts what the loader counts, a crowd region too, however the JSON is spaced, and a
    second call (from the cache) gives the same."""
    data = json.loads(COCO_SAMPLE_ANNOTATIONS.read_text())
    data["annotations"][0]["iscrowd"] = 1
    path = tmp_path / "person_keypoints_val2017.json"
    path.write_text(json.dumps(data, **layout))
    summary = summarize_annotations(path)
    _, counts = load_coco_records(path, COCO_SAMPLE_IMAGES)
    assert (summary.images, summary.people, summary.crowd_regions) == (
        counts["images"], counts["people"], counts["crowd_regions"]) == (4, 13, 1)
    assert summary.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert summarize_annotations(path) == summary


# --- the model -------------------------------------------------------------------------------------------

def test_each_run_logs_its_best_checkpoint_once_as_a_model_linked_to_the_run(tracked_sweep, tmp_path):
    client = tracked_sweep.client
    print(f"\nMlflowHooks.finish per trial (files, plots, model): {tracked_sweep.finish_seconds}")
    for run_id, run_dir in tracked_sweep.trials.values():
        run = client.get_run(run_id)
        assert "checkpoints" not in {a.path for a in client.list_artifacts(run_id)}  # uploaded once: in the model
        best = best_evaluation(run_dir)
        (output,) = run.outputs.model_outputs
        assert output.step == best["step"]
        model = client.get_logged_model(output.model_id)
        assert (model.name, model.source_run_id, str(model.status)) == ("pgnet", run_id, "READY")
        assert {m.key: m.value for m in model.metrics}["keypoints/AP"] == best["keypoints/AP"]
        local = Path(mlflow.artifacts.download_artifacts(model.artifact_location, dst_path=str(tmp_path / run_id),
                                                         tracking_uri=tracked_sweep.uri))
        checkpoint = local / "artifacts" / "checkpoint_best.pt"
        assert checkpoint.read_bytes() == (run_dir / "checkpoint_best.pt").read_bytes()
        mlmodel = yaml.safe_load((local / "MLmodel").read_text())
        assert json.loads(mlmodel["signature"]["inputs"]) == [
            {"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": [-1, -1, -1, 3]}}]
        assert [c["name"] for c in json.loads(mlmodel["signature"]["outputs"])] == list(COLUMNS)
        assert (local / "requirements.txt").read_text().split() == pip_requirements()  # given, not inferred
        assert np.asarray(json.loads((local / "input_example.json").read_text())).shape == (1, 16, 16, 3)


def test_the_best_trial_model_is_registered(tracked_sweep):
    client = tracked_sweep.client
    best_run, _ = max(tracked_sweep.trials.values(), key=lambda t: best_evaluation(t[1]).get("keypoints/AP", -1.0))
    version = client.get_model_version(REGISTERED_NAME, tracked_sweep.registered_version)
    assert (version.run_id, version.source) == (best_run, f"models:/{run_model_id(client, best_run)}")
    parent = client.get_run(tracked_sweep.parent_run_id)
    assert parent.data.tags[REGISTERED_TAG] == f"{REGISTERED_NAME}/{version.version}"
    assert (f"best trial's model registered as {REGISTERED_NAME} version {version.version} "
            f"(models:/{REGISTERED_NAME}/{version.version})") in tracked_sweep.printed


LOAD_AND_PREDICT = """
import sys, numpy as np, mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict(np.load(sys.argv[2])).to_json(sys.argv[3], orient="split")
images = np.load(sys.argv[2])
ragged = np.empty(2, dtype=object)
ragged[0], ragged[1] = images[0], images[1][:40, :56]  # two sizes: MLflow's ragged tensor
model.predict(ragged).to_json(sys.argv[4], orient="split")
"""


def test_the_registered_model_finds_the_people_predictor_finds_in_a_clean_process(tracked_sweep, tiny_data,
                                                                                  tmp_path, one_thread):
    version = tracked_sweep.client.get_model_version(REGISTERED_NAME, tracked_sweep.registered_version)
    run_dir = next(d for run_id, d in tracked_sweep.trials.values() if run_id == version.run_id)
    files = sorted((tiny_data / "val2017").glob("*.jpg"))[:2]
    images = [Image.open(f).convert("RGB") for f in files]
    np.save(tmp_path / "images.npy", np.stack([np.asarray(i) for i in images]))
    # nothing inherited: the store's address, and one thread like this test's process, so that both sum in
    # the same order and a near-tie between heatmap peaks cannot fall differently
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": tracked_sweep.uri,
           "OMP_NUM_THREADS": "1"}
    uri = f"models:/{REGISTERED_NAME}/{version.version}"  # the registry's; `models:/<model id>` is the same model
    done = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, uri, "images.npy", "batch.json", "ragged.json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    predictor = Predictor.from_checkpoint(run_dir / "checkpoint_best.pt")
    expected = people_table(predictor.people(images))
    assert len(expected) > 0
    assert_same_table(read_table(tmp_path / "batch.json"), expected)
    cropped = images[1].crop((0, 0, 56, 40))
    assert_same_table(read_table(tmp_path / "ragged.json"), people_table(predictor.people([images[0], cropped])))


def test_the_model_refuses_what_is_not_an_rgb_image_with_a_clear_error():
    for bad in (np.zeros((1, 8, 8, 3), np.float32), np.zeros((1, 8, 8, 4), np.uint8), np.zeros((8, 8), np.uint8)):
        with pytest.raises(DataError, match="PGNet's model takes uint8 RGB images of shape"):
            as_pil_images(bad)
    assert [i.size for i in as_pil_images(np.zeros((5, 7, 3), np.uint8))] == [(7, 5)]  # one image, unbatched
    empty = people_table([[], []])
    assert list(empty.columns) == list(COLUMNS) and len(empty) == 0


def read_table(path):
    import pandas as pd
    split = json.loads(path.read_text())
    return pd.DataFrame(split["data"], columns=split["columns"])


def assert_same_table(got, expected, tolerance=1e-4):
    """Every expected person matched by one row of the same image, all 55 numbers within `tolerance` (another
    process may round differently; equal scores may come in another order)."""
    assert list(got.columns) == list(COLUMNS) and len(got) == len(expected)
    values = got[list(COLUMNS[2:])].to_numpy(float)
    unused = set(range(len(got)))
    for _, person in expected.iterrows():
        candidates = [i for i in unused if got["image"].iloc[i] == person["image"]]
        errors = [np.abs(values[i] - person[list(COLUMNS[2:])].to_numpy(float)).max() for i in candidates]
        best = int(np.argmin(errors))
        assert errors[best] < tolerance, (person.to_dict(), errors[best])
        unused.remove(candidates[best])


# --- the experiment, the URL and the view ----------------------------------------------------------------

def test_experiments_are_machine_learning_experiments(tracked_sweep):
    experiment = tracked_sweep.client.get_experiment(tracked_sweep.client.get_run(tracked_sweep.parent_run_id)
                                                     .info.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"


def test_runs_table_url():
    assert runs_table_url("http://127.0.0.1:5000/", "12", "0a1b") == (
        "http://127.0.0.1:5000/#/experiments/12/runs?workflowType=machine_learning&viewStateShareKey=0a1b")
    assert runs_table_url("https://mlflow.example.org", "3") == (
        "https://mlflow.example.org/#/experiments/3/runs?workflowType=machine_learning")
    local = ui_instructions("sqlite:////tmp/x/mlflow.db", "3", "0a1b")
    assert local[0].endswith("mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db --port 5000")
    assert local[1] == f"then open {runs_table_url('http://127.0.0.1:5000', '3', '0a1b')}"
    assert ui_instructions("http://host:5000", "3") == [f"open {runs_table_url('http://host:5000', '3')}"]


def test_a_saved_view_is_an_experiment_tag_of_json_with_a_stable_key(tracked_sweep):
    client = tracked_sweep.client
    experiment_id = client.get_run(tracked_sweep.parent_run_id).info.experiment_id
    view = {"params": ("model.neck",), "metrics": ("loss",), "order_metric": "loss", "ascending": True,
            "search_filter": "x"}
    key = save_runs_view(client, experiment_id, **view)
    assert save_runs_view(client, experiment_id, **view) == key
    state = json.loads(client.get_experiment(experiment_id).tags[VIEW_TAG_PREFIX + key])
    assert state == {"searchFilter": "x", "orderByKey": "metrics.`loss`", "orderByAsc": True, "selectedColumns": [
        "attributes.`Models`", "attributes.`Dataset`", "params.`model.neck`", "metrics.`loss`"]}


# --- the sweep file's key ---------------------------------------------------------------------------------

def test_register_model_is_a_checked_sweep_file_key(tmp_path, tiny_data):
    path = tiny_sweep_file(tmp_path, tiny_data, "sqlite:///unused.db")
    assert load_sweep(path).register_model == REGISTERED_NAME
    spec = yaml.safe_load(path.read_text())
    for key, value, message in (("register_model", "no/slash", "register_model must be a model name"),
                                ("register_model", ["a"], "register_model"),
                                ("registered_model", "pgnet", "unknown key 'registered_model'")):
        path.write_text(yaml.safe_dump({**{k: v for k, v in spec.items() if k != "register_model"}, key: value}))
        with pytest.raises(ConfigError, match=message):
            load_sweep(path)
