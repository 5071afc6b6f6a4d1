"""Fixtures of the `pgnet` command-line tests: one tiny trained run."""
from __future__ import annotations

import pytest

from pipelines.cli import main


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny_overrides, one_thread):
    """One tiny `pgnet train --no-mlflow` run: (run_dir, stdout)."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", "--run-dir", str(run_dir), "--no-mlflow", "--quiet", "--set", *tiny_overrides])
    assert code == 0
    return run_dir
