"""Fixtures of the tracking tests: one real MLflow server per session, holding a small sweep logged through
the platform's own functions (the sweep's parent run, `start_trial_tracking`, `MirrorHooks`, the registry).

The sweep's two trials (`model.neck`: cffm, fpn) train the tiny config in this process (no Ray: what is
tested is what reaches MLflow); everything goes to the server over HTTP, as with `MLFLOW_TRACKING_URI`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipelines.sweeps.spec import SweepConfig, load_sweep
from pipelines.sweeps.sweep import (
    TRIALS_DIR,
    register_best_trial,
    sweep_parent_run,
    start_trial_tracking,
    sweep_tracking_lines,
)
from pipelines.tracking.hooks import MirrorHooks
from pipelines.tracking.models import best_evaluation
from tests.support.mlflow_server import MlflowServer
from tests.support.tracking import REGISTERED_NAME, tiny_sweep_file


@dataclass
class TrackedSweep:
    uri: str
    client: MlflowClient
    sweep: SweepConfig
    parent_run_id: str
    trials: dict[str, tuple[str, Path]]  # trial id -> (MLflow run id, run directory)
    finish_seconds: list[float]  # `BackgroundSender.finish` of each trial: upload, plots, the model
    registered_version: str
    printed: list[str]  # what `pgnet sweep` prints about MLflow


@pytest.fixture(scope="session")
def mlflow_server_process(tmp_path_factory) -> MlflowServer:
    """`mlflow server` on an SQLite store and an artifacts folder in tmp, on a free port. A test that freezes
    it thaws it before it ends."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    try:
        server.start()
    except RuntimeError as err:
        pytest.fail(str(err))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_process: MlflowServer) -> str:
    """The session's MLflow server's URL."""
    return mlflow_server_process.url


@pytest.fixture(scope="session")
def tracked_sweep(mlflow_server, tmp_path_factory, tiny_data) -> TrackedSweep:
    """Two trials and their parent run in the session's MLflow server, the best trial's model registered."""
    from pgnet.train import train
    folder = tmp_path_factory.mktemp("tracked_sweep")
    sweep = load_sweep(tiny_sweep_file(folder, tiny_data, mlflow_server))
    storage = folder / "sweeps"
    client = MlflowClient(mlflow_server)
    parent = sweep_parent_run(client, sweep, sweep.base_config(), storage.absolute(), resume=False)
    trials, finish_seconds = {}, []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for index, params in enumerate(sweep.corner_params()):
            cfg = sweep.trial_config(params)
            cfg.pipeline.stages = 0  # the single-process trainer: this sweep tests tracking, not Ray
            trial_id = f"tiny_{index:05d}"
            run_dir = storage / sweep.name / TRIALS_DIR / trial_id
            sender = start_trial_tracking(cfg, run_dir, mlflow_server, trial_id, f"trial_{index}", parent, params,
                                          resume=False)
            train(cfg, run_dir, progress=False, hooks=[MirrorHooks(sender)])
            start = time.perf_counter()
            assert sender.finish("FINISHED"), "the server is up: everything must arrive"
            finish_seconds.append(time.perf_counter() - start)
            trials[trial_id] = (sender.mirror.ledger.run_id, run_dir)
    finally:
        torch.set_num_threads(threads)
    client.set_terminated(parent, "FINISHED")
    best = max(trials, key=lambda t: best_evaluation(trials[t][1]).get("keypoints/AP", -1.0))
    version = register_best_trial(client, REGISTERED_NAME, parent, best)
    return TrackedSweep(mlflow_server, client, sweep, parent, trials, finish_seconds, version.version,
                        sweep_tracking_lines(sweep, storage))
