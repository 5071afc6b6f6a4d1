"""Fixtures of the `pgnet` tests: a tiny finished training run per config, trained once per session."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pgnet.train import train


@pytest.fixture(scope="session")
def trained(make_config, tmp_path_factory):
    """`trained(*overrides)`: (run_dir, summary) of a finished tiny run, trained once per session and config,
    on one torch thread (the tiny model gains nothing from two)."""
    cache: dict[tuple[str, ...], tuple[Path, dict]] = {}

    def run(*overrides: str) -> tuple[Path, dict]:
        if overrides not in cache:
            run_dir = tmp_path_factory.mktemp("run")
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                cache[overrides] = run_dir, train(make_config(*overrides), run_dir, progress=False)
            finally:
                torch.set_num_threads(threads)
        return cache[overrides]
    return run
