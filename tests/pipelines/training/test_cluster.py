"""The cluster recipes: the local multi-node cluster runs a real pipeline job; the manifests are sound.

The multi-node test stops every Ray process on the machine when it ends (that is
what `local_multinode.sh down` does), so it first shuts the session's Ray down and
runs last in the session (`last_in_session`).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

from pgnet.config import load_config
from pgnet.run.metrics_log import read_jsonl
from tests.support.configs import PIPELINE_TINY
from tests.support.paths import REPO

pytestmark = pytest.mark.ray

SCRIPT = REPO / "cluster" / "local_multinode.sh"


def run(cmd: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd[:3]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
@pytest.mark.last_in_session
def test_a_pipeline_job_runs_on_the_local_multinode_cluster(tmp_path, synthetic_dir):
    ray.shutdown()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PGNET_RAY_PORT": "6395", "PGNET_DASHBOARD_PORT": "8275", "PGNET_HEAD_CPUS": "2",
           "PGNET_WORKER_CPUS": "2", "RAY_AUTH_MODE": "token"}
    run([str(SCRIPT), "up", "1"], env)
    try:
        address = run([str(SCRIPT), "address"], env).stdout.strip()
        alive = run([sys.executable, "-c", "import ray; ray.init(address='auto', log_to_driver=False); "
                     "print(sum(n['Alive'] for n in ray.nodes()))"], {**env, "RAY_ADDRESS": address})
        assert alive.stdout.strip().splitlines()[-1] == "2"

        run_dir = tmp_path / "run"
        overrides = [*PIPELINE_TINY, f"data.synthetic_dir={synthetic_dir}", "ray.address=auto", "pipeline.stages=2"]
        job = run(["ray", "job", "submit", "--address", "http://127.0.0.1:8275", "--",
                   "pgnet", "train", "--run-dir", str(run_dir), "--quiet", "--set", *overrides], env)
        assert "succeeded" in job.stdout + job.stderr
        assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]
        hosts = {yaml.safe_load(p.read_text())["node_ip"] for p in (run_dir / "workers").glob("rank*.json")}
        assert hosts  # both stages announced where they ran
    finally:
        subprocess.run([str(SCRIPT), "down"], env=env, capture_output=True, timeout=120)


def test_rayjob_manifest_runs_a_bundled_config():
    manifest = yaml.safe_load((REPO / "cluster" / "rayjob.yaml").read_text())
    assert manifest["kind"] == "RayJob"
    entry = manifest["spec"]["entrypoint"].split()
    assert entry[:2] == ["pgnet", "train"]
    config = entry[entry.index("--config") + 1]
    overrides = entry[entry.index("--set") + 1:]
    cfg = load_config(config, overrides)  # validates every key the manifest sets
    workers = sum(g["replicas"] for g in manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert workers == cfg.pipeline.stages * cfg.pipeline.data_parallel


def test_cluster_launcher_yaml_has_gpu_workers():
    spec = yaml.safe_load((REPO / "cluster" / "aws_gpu.yaml").read_text())
    gpus = [t["resources"].get("GPU", 0) for t in spec["available_node_types"].values()]
    assert max(gpus) >= 1
    assert any("pip install -e ." in c for c in spec["setup_commands"])
