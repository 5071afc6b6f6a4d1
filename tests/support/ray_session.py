"""The tests' local Ray: started once per test session, small, and restarted if a test stopped it."""
from __future__ import annotations

import os

import ray

from pipelines.training.ray_runtime import start_local_ray

RAY_CPUS = 6  # logical: up to 4 Train workers + Ray Data slots, on a 2-core machine


# Ray Train's controller polls its workers every 2 s: a run's start, checkpoints and end wait for the next poll.
# Every half second, the tests' many tiny runs wait less (read by the controller from the driver's environment).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def ensure_local_ray() -> None:
    if not ray.is_initialized():
        start_local_ray(RAY_CPUS, log_to_driver=False)
