"""Tests of the `pgnet` command line's failures: a user error exits 2 with one line that says what to do, a bug
keeps its traceback, and a run that fails or cannot start leaves no open MLflow run."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.cli import main
from tests.support.cli import SCRIPT, run_cli
from tests.support.videos import write_audio_only

pytestmark = pytest.mark.usefixtures("one_thread")


def error_lines(err: str) -> list[str]:
    """stderr without log records (those start with the level name)."""
    return [line for line in err.splitlines()
            if line.strip() and not re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) ", line)]


def test_console_script_user_error_has_no_traceback(tmp_path):
    out = subprocess.run([str(SCRIPT), "eval", "--predictions", str(tmp_path / "r.json")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert error_lines(out.stderr) == [
        "pgnet eval: error: --predictions needs --annotations GT.json (the ground truth to score against)"]


IMAGES = "(.jpg, .jpeg, .png, .bmp, .webp, .tif, .tiff)"
VIDEOS = "(.mp4, .m4v, .mov, .avi, .mkv, .webm, .mpg, .mpeg, .wmv, .flv, .3gp, .ogv)"
PLAYABLE = "pass a video file FFmpeg can play (mp4, mkv, mov, avi, webm)"


def bad_predict_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (an input `pgnet predict` refuses, its whole error line after `pgnet predict: error: `)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    corrupt = tmp_path / "clip.mp4"
    corrupt.write_bytes(b"not a video" * 50)
    pdf = tmp_path / "slides.pdf"
    pdf.write_bytes(b"%PDF-1.4")
    sound = write_audio_only(tmp_path / "sound.mkv")
    return {
        "empty-folder": (empty, f"folder {empty} holds no images {IMAGES} or videos {VIDEOS}; "
                                "pass image or video files, or a folder of them"),
        "missing": (tmp_path / "gone.jpg", f"{tmp_path / 'gone.jpg'} does not exist; "
                                           "pass image or video files, or folders of them"),
        "unknown-suffix": (pdf, f"{pdf} is neither an image {IMAGES} nor a video {VIDEOS}; "
                                "rename it if it is one, or leave it out"),
        "corrupt-video": (corrupt, f"cannot read video {corrupt} (Invalid data found when processing input); "
                                   f"{PLAYABLE}"),
        "no-video-stream": (sound, f"{sound} has no video stream (it holds audio); {PLAYABLE}"),
    }


@pytest.mark.parametrize("case", ["empty-folder", "missing", "unknown-suffix", "corrupt-video", "no-video-stream"])
def test_predict_on_a_bad_input_is_a_user_error(capsys, tmp_path, cli_run, tiny_data, case):
    path, message = bad_predict_inputs(tmp_path)[case]
    good = tiny_data / "val2017"  # a good folder first: nothing is predicted before every input is checked
    code, _, err = run_cli(capsys, "predict", "--checkpoint", cli_run / "checkpoint_last.pt", good, path,
                           "--out", tmp_path / "out")
    assert code == 2
    assert error_lines(err) == [f"pgnet predict: error: {message}"]
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_predict_with_no_readable_image_is_a_user_error(capsys, tmp_path, cli_run):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    code, _, err = run_cli(capsys, "predict", "--checkpoint", cli_run / "checkpoint_last.pt", junk,
                           "--out", tmp_path / "out")
    assert code == 2
    assert error_lines(err) == [f"pgnet predict: error: none of the 1 image(s) could be read ({junk}); "
                                "pass image files (JPEG, PNG) that Pillow can open"]


def test_failed_training_closes_the_mlflow_run_as_failed(capsys, tmp_path, monkeypatch, tiny_overrides,
                                                         tiny_data_copy):
    from mlflow.tracking import MlflowClient
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for image in sorted((tiny_data_copy / "train2017").glob("*.jpg"))[:3]:  # 3 of 16 > data.max_bad_fraction
        image.write_bytes(b"not an image")
    code, _, err = run_cli(capsys, "train", "--run-dir", tmp_path / "run", "--quiet", "--set", *tiny_overrides,
                           f"data.root={tiny_data_copy}", "data.max_bad_fraction=0.05", "tracking.mlflow=true",
                           "tracking.experiment=cli-fail")
    assert code == 2 and "could not be read" in err  # failed mid-epoch, after its MLflow run started
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cli-fail").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


# --- user errors ---------------------------------------------------------------------------------

def user_errors(tmp_path: Path, coco_sample: Path, tiny_data: Path) -> list[tuple[list, str, str]]:
    """(argv, the one-line message must contain, and this too: what to do)."""
    gt = coco_sample / "annotations/person_keypoints_val2017.json"
    not_json = tmp_path / "not_json.json"
    not_json.write_text("{not json")
    a_dict = tmp_path / "dict.json"
    a_dict.write_text(json.dumps({"image_id": 785}))
    no_score = tmp_path / "no_score.json"
    no_score.write_text(json.dumps([{"image_id": 785, "category_id": 1, "keypoints": [0] * 51}]))
    other_image = tmp_path / "other_image.json"
    other_image.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 1.0, "keypoints": [0] * 51}]))
    garbage_ckpt = tmp_path / "garbage.pt"
    garbage_ckpt.write_bytes(b"\x00\x01 not a checkpoint")
    run = tmp_path / "run"
    return [
        (["train", "--run-dir", run, "--no-mlflow", "--set", "model.nrom=gn"], "unknown key 'model.nrom'", "norm"),
        (["train", "--run-dir", run, "--no-mlflow", "--config", tmp_path / "nope.yaml"], "nope.yaml", "cpu_small"),
        (["train", "--run-dir", run, "--no-mlflow", "--set", "data.input_size=[100, 100]"],
         "data.input_size", "multiples of 32"),
        (["train", "--run-dir", run, "--no-mlflow", "--resume", "--set", f"data.root={tiny_data}",
          "data.input_size=[64, 64]", "train.batch_size=4"], "no checkpoint_last.pt", "drop --resume"),
        (["train", "--run-dir", run, "--no-mlflow", "--resume", "--set", "pipeline.stages=2"],
         "no pipeline checkpoint", "drop --resume"),
        (["eval", "--checkpoint", tmp_path / "missing.pt", "--data", tiny_data], "missing.pt", "pgnet train"),
        (["eval", "--checkpoint", garbage_ckpt, "--data", tiny_data], "garbage.pt", "pgnet train"),
        (["eval", "--checkpoint", tmp_path, "--data", tiny_data], "is a folder", "checkpoint file"),
        (["predict", "--checkpoint", tmp_path / "missing.pt", tiny_data / "val2017", "--out", tmp_path / "o"],
         "missing.pt", "pgnet train"),
        (["eval", "--predictions", not_json], "--predictions needs --annotations", "GT.json"),
        (["eval", "--checkpoint", garbage_ckpt, "--data", tiny_data, "--set", "model.norm=gn"], "model.norm=gn",
         "only eval.* keys"),
        (["eval", "--annotations", gt, "--predictions", not_json, "--set", "eval.rescore=false"], "--set",
         "scored as it is"),
        (["eval"], "--annotations GT.json --predictions RESULTS.json", "--checkpoint CKPT"),
        (["eval", "--annotations", gt, "--predictions", not_json], "not a valid JSON", "JSON list"),
        (["eval", "--annotations", gt, "--predictions", a_dict], "must be a JSON list", "one object per detection"),
        (["eval", "--annotations", gt, "--predictions", no_score], "missing score", "every result needs"),
        (["eval", "--annotations", gt, "--predictions", other_image], "not in the ground truth: 1", "same split"),
        (["eval", "--annotations", tmp_path / "gt.json", "--predictions", not_json], "gt.json", "person_keypoints"),
        (["eval", "--checkpoint", garbage_ckpt, "--data", tmp_path / "nodata"], "garbage.pt", "pgnet train"),
    ]


USER_ERROR_IDS = ["unknown-key", "missing-config", "input-size", "resume-nothing", "resume-pipeline-nothing",
                  "missing-checkpoint", "garbage-checkpoint", "folder-as-checkpoint", "predict-missing-checkpoint",
                  "predictions-without-annotations", "eval-set-model-key", "eval-set-on-results", "eval-nothing",
                  "results-not-json", "results-not-a-list", "result-without-score", "result-unknown-image",
                  "missing-annotations", "garbage-checkpoint-no-data"]


@pytest.mark.parametrize("case", range(len(USER_ERROR_IDS)), ids=USER_ERROR_IDS)
def test_user_error_exits_2_with_one_line(capsys, tmp_path, coco_sample, tiny_data, case):
    argv, what, todo = user_errors(tmp_path, coco_sample, tiny_data)[case]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"pgnet {argv[0]}: error: ")
    assert what in lines[0] and todo in lines[0]


def test_existing_run_dir_is_a_user_error(capsys, cli_run, tiny_overrides):
    code, _, err = run_cli(capsys, "train", "--run-dir", cli_run, "--no-mlflow", "--quiet", "--set", *tiny_overrides)
    assert code == 2
    assert error_lines(err) == [f"pgnet train: error: {cli_run} already holds a run; pass --resume to continue it "
                                "or pick a new --run-dir"]


def test_existing_run_dir_opens_no_mlflow_run(capsys, cli_run, tiny_overrides, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, _, _ = run_cli(capsys, "train", "--run-dir", cli_run, "--quiet", "--set", *tiny_overrides,
                         "tracking.mlflow=true", "tracking.experiment=cli-existing")
    assert code == 2
    assert MlflowClient(uri).get_experiment_by_name("cli-existing") is None  # nothing logged of the old run


def test_resume_of_nothing_opens_no_mlflow_run_and_reads_no_data(capsys, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    synthetic = tmp_path / "synthetic"
    for stages in ("0", "2"):
        code, _, err = run_cli(capsys, "train", "--run-dir", tmp_path / "typo", "--resume", "--set",
                               f"pipeline.stages={stages}", f"data.synthetic_dir={synthetic}",
                               "tracking.mlflow=true", "tracking.experiment=cli-resume-nothing")
        assert code == 2 and "drop --resume" in err
    assert MlflowClient(uri).get_experiment_by_name("cli-resume-nothing") is None
    assert not synthetic.exists()  # the data set was not generated for a run that cannot start


class RunsCode:
    """A pickle that creates a file when it is loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(capsys, tmp_path, tiny_data, command):
    marker = tmp_path / "ran"
    evil = tmp_path / "shared.pt"
    torch.save({"model": {"w": RunsCode(marker)}, "config": {}}, evil)
    argv = (["eval", "--checkpoint", evil, "--data", tiny_data] if command == "eval" else
            ["predict", "--checkpoint", evil, tiny_data / "val2017", "--out", tmp_path / "out"])
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "Traceback" not in err
    (line,) = error_lines(err)
    assert "shared.pt" in line and "never unpickles" in line and "pgnet train" in line
    assert not marker.exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "eval", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(tmp_path)])


@pytest.mark.parametrize("bug", [ValueError, RuntimeError, FileNotFoundError])
def test_a_bug_keeps_its_traceback_even_when_its_type_is_a_user_errors_base(monkeypatch, tmp_path, bug):
    """Only `PGNetError`s are user errors: a plain ValueError from inside the platform is a bug to report."""
    import pgnet.data.synthetic

    def broken(*args, **kwargs):
        raise bug("an internal invariant broke")
    monkeypatch.setattr(pgnet.data.synthetic, "write_synthetic_dataset", broken)
    with pytest.raises(bug, match="internal invariant"):
        main(["data", "synth", "--out", str(tmp_path / "d"), "--images", "1", "--val-images", "1"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
