"""Fixtures of the tracking tests: one real MLflow server per session, holding a small sweep logged through
the platform's own functions (the sweep's parent run, `trial_run_id`, `MlflowHooks`, the registry).

The sweep's two trials (`model.neck`: cffm, fpn) train the tiny config in this process (no Ray: what is
tested is what reaches MLflow); everything goes to the server over HTTP, as with `MLFLOW_TRACKING_URI`.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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
    sweep_tracking_lines,
    trial_run_id,
)
from pipelines.tracking.hooks import MlflowHooks
from pipelines.tracking.models import best_evaluation
from tests.support.tracking import REGISTERED_NAME, tiny_sweep_file

MLFLOW = Path(sys.executable).with_name("mlflow")
SERVER_START_S = 180  # a loaded 2-core machine: it usually answers within 10 s


@dataclass
class TrackedSweep:
    uri: str
    client: MlflowClient
    sweep: SweepConfig
    parent_run_id: str
    trials: dict[str, tuple[str, Path]]  # trial id -> (MLflow run id, run directory)
    finish_seconds: list[float]  # `MlflowHooks.finish` of each trial: upload, plots, the model
    registered_version: str
    printed: list[str]  # what `pgnet sweep` prints about MLflow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on an SQLite store and an artifacts folder in tmp, on a free port: its URL."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers
    with open(root / "server.log", "wb") as log:  # the server keeps its own copy of the descriptor
        server = subprocess.Popen(
            [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
             str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker: their own process group
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


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
            run_id = trial_run_id(client, cfg, trial_id, f"trial_{index}", parent, params)
            run_dir = storage / sweep.name / TRIALS_DIR / trial_id
            hooks = MlflowHooks(client, run_id)
            train(cfg, run_dir, progress=False, hooks=[hooks])
            start = time.perf_counter()
            hooks.finish(run_dir, "FINISHED")
            finish_seconds.append(time.perf_counter() - start)
            trials[trial_id] = (run_id, run_dir)
    finally:
        torch.set_num_threads(threads)
    client.set_terminated(parent, "FINISHED")
    best = max(trials, key=lambda t: best_evaluation(trials[t][1]).get("keypoints/AP", -1.0))
    version = register_best_trial(client, REGISTERED_NAME, parent, best)
    return TrackedSweep(mlflow_server, client, sweep, parent, trials, finish_seconds, version.version,
                        sweep_tracking_lines(sweep, storage))
