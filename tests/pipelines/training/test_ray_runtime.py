"""The resource plan: a local Ray sized for the runs and Ray Data, and plans no cluster can place refused."""
from __future__ import annotations

import os

import pytest

from pgnet.config import load_config
from pgnet.errors import ConfigError
from pipelines.training.ray_runtime import check_capacity, check_local_gpus, local_cpus

pytestmark = pytest.mark.ray


def test_a_local_ray_has_cpus_for_every_run_and_for_ray_data():
    cfg = load_config(None, ["pipeline.stages=2", "ray.cpus_per_worker=1"])
    # 3 runs x (2 workers + a 0.1-CPU driver) = 6.3, and 2 slots for Ray Data: 8.3, rounded up
    assert local_cpus(cfg, concurrent_runs=3) == max(os.cpu_count(), 9)
    assert local_cpus(load_config(None, ["ray.num_cpus=3"]), concurrent_runs=3) == 3  # the user's figure wins


def test_a_plan_the_cluster_cannot_place_is_refused(local_ray):
    fits = load_config(None, ["pipeline.stages=2", "ray.cpus_per_worker=1"])
    check_capacity(fits, concurrent_runs=1)
    too_big = load_config(None, ["pipeline.stages=2", "ray.cpus_per_worker=4"])
    # 2 runs x (2 workers x 4 CPUs + a 0.1-CPU driver) + one 0.5-CPU Ray Data task, on a 6-CPU Ray
    with pytest.raises(ConfigError, match=r"2 concurrent run\(s\) need 16.7 CPUs.*lower max_concurrent_trials"):
        check_capacity(too_big, concurrent_runs=2)


def test_gpu_workers_on_a_ray_without_gpus_are_refused(local_ray):
    check_local_gpus(load_config(None, ["pipeline.stages=2"]), concurrent_runs=1)
    with pytest.raises(ConfigError, match=r"need 4 GPU\(s\), one per worker.*has 0; set ray.use_gpu=false"):
        check_local_gpus(load_config(None, ["pipeline.stages=2", "pipeline.data_parallel=2", "ray.use_gpu=true"]), 1)
