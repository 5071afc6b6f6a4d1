"""The run directory: its names, and the checks made before a run touches any data."""
from __future__ import annotations

import pytest

from pgnet.config import Config
from pgnet.errors import MissingFileError, OutputExistsError
from pgnet.run.layout import RunDir


def test_a_new_run_refuses_a_directory_that_holds_one(tmp_path):
    run = RunDir(tmp_path)
    run.check_new()
    run.metrics.write_text("{}\n")
    with pytest.raises(OutputExistsError, match="--resume"):
        run.check_new()


def test_resume_needs_the_last_checkpoint(tmp_path):
    with pytest.raises(MissingFileError, match="checkpoint_last.pt.*drop --resume"):
        RunDir(tmp_path).check_resumable()


def test_the_config_written_is_the_config_read(tmp_path):
    cfg = Config()
    cfg.model.norm = "gn"
    run = RunDir(tmp_path / "run")
    assert run.write_config(cfg).name == "config.yaml"
    assert run.read_config() == cfg
