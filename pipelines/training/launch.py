"""`pgnet train` with `pipeline.stages >= 1`: PGNet pipeline-parallel (x data-parallel) on Ray Train.

The driver reads the annotation file, measures and prints the stage balance, and runs a
`TorchTrainer` of S x D workers (`pipelines.training.worker`), each given the same `WorkerPlan`.
`--resume` continues from the run's newest complete checkpoint, with any stage count.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray.train import (
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
)
from ray.train.torch import TorchConfig, TorchTrainer

from pgnet.config import Config
from pgnet.data.dataset import coco_paths
from pgnet.data.order import steps_per_epoch
from pgnet.data.records import load_coco_records
from pgnet.data.source import resolve_data_root
from pgnet.errors import (
    CheckpointError,
    ConfigError,
    MissingFileError,
    OutputExistsError,
    TrainingError,
)
from pgnet.run.build import seeded_model, total_steps
from pgnet.run.layout import LAST_CHECKPOINT, RunDir
from pipelines.training.balance import (
    UnitCost,
    costs_to_json,
    measure_unit_costs,
    partition,
    stage_table,
)
from pipelines.training.data_feed import encoded_batches
from pipelines.training.plan import WorkerPlan
from pipelines.training.ray_runtime import ensure_ray
from pipelines.training.schedules import virtual_stages
from pipelines.training.shards import read_checkpoint, read_meta
from pipelines.training.worker import train_loop_per_worker

log = logging.getLogger("pgnet.pipeline")


def choose_balance(cfg: Config, run_dir: RunDir | None = None, print_fn=print) -> list[int]:
    """Units per pipeline piece: `pipeline.balance`, or cut from measured unit costs (printed)."""
    pieces = cfg.pipeline.stages * virtual_stages(cfg.pipeline.schedule, cfg.pipeline.virtual_stages)
    model = seeded_model(cfg)
    if pieces == 1 and not cfg.pipeline.balance:  # nothing to cut: no need to time the units
        units = len(model.units())
        print_fn(f"stage balance: one stage holds all {units} units")
        return [units]
    microbatch = cfg.train.batch_size // cfg.pipeline.data_parallel // cfg.pipeline.microbatches
    costs = unit_costs(cfg, model, max(1, microbatch))
    balance = list(cfg.pipeline.balance) if cfg.pipeline.balance else partition([c.seconds for c in costs], pieces)
    if len(balance) != pieces:
        raise ConfigError(f"pipeline.balance has {len(balance)} entries but the run needs {pieces} "
                         "(stages x stages per worker of pipeline.schedule)")
    table, imbalance = stage_table(costs, balance)
    source = "pipeline.balance" if cfg.pipeline.balance else "measured forward+backward time"
    print_fn(f"stage balance ({source}, micro-batch {microbatch}):\n{table}")
    if run_dir is not None:
        run_dir.balance.write_text(json.dumps(
            {"balance": balance, "imbalance": imbalance, "units": costs_to_json(costs)}, indent=1))
    return balance


_MEASURED: dict[tuple, list[UnitCost]] = {}  # unit costs measured in this process (a sweep driver, a test session)


def unit_costs(cfg: Config, model, microbatch: int) -> list[UnitCost]:
    """The units' measured costs for this model, input, micro-batch, layout and precision: measured once per
    process, so that a process starting many runs of one model does not time it again for each."""
    key = (repr(cfg.model), tuple(cfg.data.input_size), microbatch, cfg.train.channels_last, cfg.train.precision,
           torch.get_num_threads())
    if key not in _MEASURED:
        _MEASURED[key] = measure_unit_costs(model, tuple(cfg.data.input_size), microbatch,
                                            channels_last=cfg.train.channels_last, precision=cfg.train.precision)
    return _MEASURED[key]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest pipeline checkpoint folder under `run_dir/ray` (Ray Train's storage) that reads whole: a newer
    one that a crash left truncated or damaged is skipped, with a warning, for the one before it (Ray Train
    keeps two)."""
    folders = [p for p in RunDir(run_dir).stage_checkpoints.glob("*/checkpoint_*") if p.is_dir()]
    for folder in sorted(folders, key=_checkpoint_step, reverse=True):
        try:
            read_checkpoint(folder)
        except (CheckpointError, MissingFileError, KeyError, TypeError) as err:
            log.warning("skipping the damaged pipeline checkpoint %s (%s); trying the one before it", folder, err)
            continue
        return folder
    return None


def _checkpoint_step(folder: Path) -> int:
    """The step a checkpoint folder was written at; -1 when its meta.pt cannot say (it is then skipped)."""
    try:
        return int(read_meta(folder)["step"])
    except (CheckpointError, MissingFileError, FileNotFoundError, KeyError, TypeError, ValueError):
        return -1


def resume_point(run_dir: str | Path, required: bool) -> Path | None:
    """The stage checkpoint folder a resumed run continues from. None: there is none yet, and the run starts
    from scratch (a sweep's trial restored before its first checkpoint); `required` (the CLI's --resume)
    refuses instead."""
    run_dir = RunDir(run_dir)
    found = latest_checkpoint(run_dir.path)
    if found is not None:
        return found
    if run_dir.last_checkpoint.is_file():  # a pipeline run writes it only after its stage checkpoints
        raise OutputExistsError(f"{run_dir.path} holds a single-process run ({LAST_CHECKPOINT}), not pipeline stage "
                              "checkpoints; resume it with pipeline.stages=0, or start the pipeline run in a "
                              "new --run-dir")
    if required:
        raise MissingFileError(f"--resume: {run_dir.path} has no pipeline checkpoint (under "
                               f"{run_dir.stage_checkpoints}) to continue from; drop --resume to start a new run there")
    log.warning("no checkpoint in %s yet; starting from scratch", run_dir.path)
    return None


def train_on_ray(cfg: Config, run_dir: str | Path, *, resume: bool = False, callbacks: list | None = None,
                 probes: tuple = (), concurrent_runs: int = 1, preencoded_batches: int = 0) -> dict[str, Any]:
    """Run pipeline training; returns the last report's metrics (epoch, step, loss, AP...). `probes`: observers
    every worker runs (`pipelines.training.probes`). `preencoded_batches` > 0: the driver encodes that many
    batches once and the workers cycle them instead of reading Ray Data (`pgnet bench pipeline`). The workers never call MLflow: the caller mirrors the run
    directory into it (`pipelines.tracking.hooks.start_tracking`)."""
    cfg = copy.deepcopy(cfg)
    cfg.data.pin_paths()  # the workers run in Ray's session folder
    cfg.pipeline.pin_paths()
    run_dir = RunDir(Path(run_dir).absolute())
    run_dir.path.mkdir(parents=True, exist_ok=True)
    found = resume_point(run_dir.path, required=False) if resume else None
    if not resume:
        run_dir.check_new()
    ensure_ray(cfg, concurrent_runs)
    root = resolve_data_root(cfg.data)
    records, _ = load_coco_records(*coco_paths(root, cfg.data.train_split))
    plan = WorkerPlan(cfg=cfg, run_dir=run_dir.path, records=ray.put(records),
                      balance=tuple(choose_balance(cfg, run_dir)), total_steps=total_steps(cfg, len(records)),
                      steps_per_epoch=steps_per_epoch(len(records), cfg.train.batch_size), resume_from=found,
                      probes=tuple(probes),
                      preencoded=ray.put(encoded_batches(records, cfg, preencoded_batches)) if preencoded_batches else None)
    workers = cfg.pipeline.stages * cfg.pipeline.data_parallel
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=plan.as_loop_config(),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker={"CPU": cfg.ray.cpus_per_worker}),
        # Batch flags, targets, feed metrics and the evaluation gather travel as CPU tensors, which NCCL
        # cannot carry: on GPUs, gloo takes the CPU tensors and NCCL the CUDA ones (untested here: no GPU).
        torch_config=TorchConfig(backend="cpu:gloo,cuda:nccl" if cfg.ray.use_gpu else "gloo"),
        run_config=RunConfig(name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
                             storage_path=str(run_dir.stage_checkpoints),
                             failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks or []),
    )
    if cfg.data.cache == "ram":
        log.info("data.cache=ram is the single-process trainer's: here Ray Data reads the images every epoch")
    log.info("training %d steps on %d Ray Train workers (%d stages x %d replicas, %s, %d micro-batches)",
             plan.total_steps, workers, cfg.pipeline.stages, cfg.pipeline.data_parallel, cfg.pipeline.schedule,
             cfg.pipeline.microbatches)
    try:
        result = trainer.fit()
    except TrainingFailedError as err:
        raise TrainingError(f"pipeline training failed: {worker_error(err)}") from err
    if result.checkpoint is not None:
        log.info("last checkpoint (one shard per stage): %s", result.checkpoint.path)
    return dict(result.metrics or {})


def worker_error(err: TrainingFailedError) -> str:
    """The workers' own error messages (their tracebacks are in the Ray logs above)."""
    failures = getattr(err, "worker_failures", None)
    if failures:
        messages = sorted({f"{type(e).__name__}: {e}".splitlines()[0] for e in failures.values()})
        ranks = ", ".join(str(r) for r in sorted(failures))
        return f"rank(s) {ranks}: " + "; ".join(messages)
    return str(err).splitlines()[-1]
