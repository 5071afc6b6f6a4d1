"""Starting or joining Ray with a resource plan that cannot deadlock.

Ray Data's read and map tasks need CPU slots of their own beside the Train
workers (with too few, a Tune trial + 2 workers + Ray Data waits forever on
"backpressured: ResourceBudget"), so a local Ray gets logical CPUs for both.
"""
from __future__ import annotations

import logging
import math
import os

from pgnet.config import Config
from pgnet.errors import ConfigError

log = logging.getLogger("pgnet.ray")

# `import ray` sits in the functions that talk to Ray: the resource arithmetic (`workers_per_run`,
# `cpus_per_run`) also serves `pgnet sweep --dry-run` (pipelines.sweeps.dry_run), which must not import Ray.
DATA_CPUS = 2  # logical CPU slots kept free for Ray Data tasks
DRIVER_CPU = 0.1  # what a Tune trial asks for: it only waits on its Train run
RUNTIME_ENV = {"env_vars": {
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",
    # Worker processes start slowly on a busy small machine (import torch + ray, at most one start per
    # core at a time); Ray Train's default 60 s start-up limit then retries for ever. Wait longer instead.
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
    # Ray Train V2 logs every `print` of a worker, even one sent to a redirected stdout: pycocotools'
    # tables would fill the driver's output at every evaluation. Our code logs; prints stay plain prints.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}}
# A local Ray has no node to be preempted: no preemption-watcher actor (one process less per run),
# and the controller polls its workers every 0.5 s instead of 2 s (a short run ends sooner).
LOCAL_RUNTIME_ENV = {"env_vars": {**RUNTIME_ENV["env_vars"], "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                                  "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}}


def workers_per_run(cfg: Config) -> int:
    return max(1, cfg.pipeline.stages) * cfg.pipeline.data_parallel


def cpus_per_run(cfg: Config) -> float:
    return workers_per_run(cfg) * cfg.ray.cpus_per_worker


def _runs_cpus(cfg: Config, concurrent_runs: int) -> float:
    """CPUs that the runs themselves hold: their Train workers and the process driving each."""
    return concurrent_runs * (cpus_per_run(cfg) + DRIVER_CPU)


def local_cpus(cfg: Config, concurrent_runs: int = 1) -> int:
    """Logical CPUs for a local Ray: every concurrent run's workers and driver, plus Ray Data's slots."""
    if cfg.ray.num_cpus:
        return cfg.ray.num_cpus
    return max(os.cpu_count() or 1, math.ceil(_runs_cpus(cfg, concurrent_runs) + DATA_CPUS))


def check_capacity(cfg: Config, concurrent_runs: int) -> None:
    """Refuse a plan the cluster can never place, instead of waiting forever for resources: the runs
    and at least one Ray Data task (with no CPU left for one, the workers wait for data for ever)."""
    import ray
    have = ray.cluster_resources().get("CPU", 0)
    need = _runs_cpus(cfg, concurrent_runs) + cfg.ray.data_cpus
    if need > have:
        raise ConfigError(
            f"{concurrent_runs} concurrent run(s) need {need:g} CPUs ({cpus_per_run(cfg):g} for each run's workers, "
            f"{DRIVER_CPU:g} for its driver, {cfg.ray.data_cpus:g} for a Ray Data task) but the cluster has "
            f"{have:g}; lower max_concurrent_trials or ray.cpus_per_worker, or add nodes")


def ensure_ray(cfg: Config, concurrent_runs: int = 1) -> None:
    """Join `ray.address` ("auto", "ray://host:10001") or, when it is unset, the cluster named by
    RAY_ADDRESS (as `ray job submit` sets it); else start a local Ray sized by `local_cpus`."""
    import ray
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, runtime_env=RUNTIME_ENV, log_to_driver=True)
        return
    cpus = local_cpus(cfg, concurrent_runs)
    log.info("starting a local Ray with %d logical CPUs", cpus)
    start_local_ray(cpus)
    check_local_gpus(cfg, concurrent_runs)


def check_local_gpus(cfg: Config, concurrent_runs: int) -> None:
    """With `ray.use_gpu`, every worker asks one GPU. A local Ray with fewer would wait for them for ever
    (a cluster may still add GPU nodes on demand, so only the local case is refused)."""
    import ray
    if not cfg.ray.use_gpu:
        return
    need = concurrent_runs * workers_per_run(cfg)
    have = ray.cluster_resources().get("GPU", 0)
    if need > have:
        raise ConfigError(
            f"ray.use_gpu=true: {concurrent_runs} run(s) of {workers_per_run(cfg)} workers need {need} GPU(s), "
            f"one per worker, but this machine's Ray has {have:g}; set ray.use_gpu=false to train on CPU "
            "processes, or join a cluster with GPUs (ray.address)")


def start_local_ray(num_cpus: int, log_to_driver: bool = True) -> None:
    import ray
    # The dashboard serves the state API, which Ray Train's placement-group cleaner needs: without it,
    # a Train run whose owner exits first (a finished Tune trial) keeps its CPUs reserved for ever.
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", runtime_env=LOCAL_RUNTIME_ENV,
             log_to_driver=log_to_driver, configure_logging=True, logging_level=logging.WARNING)
