"""The tests' local Ray: started once per test session, small, and restarted if a test stopped it."""
from __future__ import annotations

import ray

from pipelines.training.ray_runtime import start_local_ray

RAY_CPUS = 6  # logical: up to 4 Train workers + Ray Data slots, on a 2-core machine


def ensure_local_ray() -> None:
    if not ray.is_initialized():
        start_local_ray(RAY_CPUS, log_to_driver=False)
