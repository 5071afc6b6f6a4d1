"""The Ray Train worker loop of pipeline-parallel PGNet training (one worker = one stage of one replica).

A short loop over the run core (`pgnet.run.TrainingRun`), like the single-process trainer. Per
step: the replica's first stage pulls a batch from Ray Data and ships its targets to the last
stage; the schedule runs the micro-batches; every rank learns the loss. Per epoch: rank 0
evaluates the gathered model; every stage saves its shard and all workers report together.
"""
from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist

from pgnet.config import Config
from pgnet.data.order import steps_per_epoch
from pgnet.evaluation.inference import evaluate_model
from pgnet.run.build import seeded_model, validation_dataset
from pgnet.run.checkpoint import checkpoint_dict
from pgnet.run.state import RunState
from pgnet.run.training_run import TrainingRun
from pipelines.training.data_feed import (
    FeedStats,
    dataset_blocks,
    epoch_dataset,
    full_batches,
    replica_rows,
)
from pipelines.training.plan import PLAN_KEY, WorkerPlan
from pipelines.training.probes import StepView
from pipelines.training.runner import PipelineRunner
from pipelines.training.schedules import loss_worker
from pipelines.training.shards import load_shards, write_shard_checkpoint
from pipelines.training.topology import Topology, make_groups
from pipelines.training.trace import StepTrace

log = logging.getLogger("pgnet.worker")

# Ray Train modules whose INFO lines repeat every report (see `_quiet_ray_train_reports`)
RAY_REPORT_LOGGERS = ("ray.train.v2._internal.execution.context", "ray.train.v2._internal.execution.storage")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker; `config` carries the driver's `WorkerPlan`."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _quiet_ray_train_reports()
    plan: WorkerPlan = config[PLAN_KEY]
    cfg = plan.cfg
    topo = Topology(cfg.pipeline.stages, cfg.pipeline.data_parallel, ray.train.get_context().get_world_rank(),
                    loss_stage=loss_worker(cfg.pipeline.schedule, cfg.pipeline.stages, cfg.pipeline.virtual_stages))
    torch.set_num_threads(max(1, cfg.train.threads or int(cfg.ray.cpus_per_worker)))
    device = ray.train.torch.get_device()
    model = seeded_model(cfg)
    runner = PipelineRunner(cfg, topo, make_groups(topo), model, list(plan.balance), plan.total_steps, device)
    if topo.rank != 0:
        del model  # only the stage modules stay alive here
    run = TrainingRun(cfg, plan.run_dir, writer=topo.rank == 0)
    run.begin(_restore(plan, runner, topo))
    _announce(run, topo, device)
    probes = plan.probes + ((StepTrace(runner, run.state.step, plan.run_dir, cfg.pipeline.schedule),)
                            if cfg.pipeline.trace else ())
    records = ray.get(plan.records) if topo.first else []
    preencoded = ray.get(plan.preencoded) if topo.first and plan.preencoded is not None else None
    val_set = validation_dataset(cfg, progress=False) if topo.rank == 0 else None
    for probe in probes:
        probe.start(plan.run_dir, topo)
    runner.train()
    totals = FeedStats()  # images read and skipped since this attempt started
    state = run.state
    while run.more_steps():
        epoch, done = state.next_epoch()  # a cut epoch goes on past the rows it read
        rows_before = _rows_before(state, topo, cfg)
        stats, losses, step_seconds = FeedStats(), [], []
        batches = _epoch_batches(records, cfg, epoch, topo, rows_before, stats, preencoded)
        tick = time.perf_counter()
        while not run.finished:
            waited = stats.wait_seconds
            batch = next(batches, None) if topo.first else None
            if not _all_have_batch(batch is not None or not topo.first):
                break
            images, packed, ids = _exchange_batch(batch, topo, runner, cfg)
            with contextlib.ExitStack() as stack:
                view = StepView(state.step + 1, topo, images, packed, ids)
                for probe in probes:
                    stack.enter_context(probe.around_step(view))
                loss, terms, lr = runner.step(images, packed)
            now = time.perf_counter()
            step_seconds.append(now - tick)
            # the wait for this step's batch, as the first stage of replica 0 (rank 0, the record's writer) saw it
            record = run.step_done(epoch, loss, terms, lr, cfg.train.batch_size / (now - tick),
                                   {"data/wait_s": stats.wait_seconds - waited})
            tick = now
            losses.append(loss)
            if run.step_checkpoint_due(done + len(losses), plan.steps_per_epoch):
                _checkpoint_mid_epoch(run, runner, topo, epoch, done + len(losses),
                                      rows_before + stats.seen if topo.first else 0)
            if topo.rank == 0 and (state.step % cfg.train.log_every == 0 or state.step == 1):
                log.info("epoch %d step %d/%d loss %.4f lr %.2e %.1f images/s", epoch, state.step,
                         state.total_steps, loss, lr, record["images_per_s"])
        if topo.first:
            run.count_samples(stats.seen, stats.bad)
            totals.seen, totals.bad = totals.seen + stats.seen, totals.bad + stats.bad
        if done and not losses:  # the cut came at the epoch's last batch: it was complete after all
            state.end_epoch(epoch, done, done)
            continue
        batches_done = done + len(losses)
        rows = None
        if state.cut_short(batches_done, plan.steps_per_epoch):  # the same on every rank
            rows = _rows_read(rows_before + stats.seen if topo.first else 0, topo)
        end = run.end_epoch(epoch, batches_done, plan.steps_per_epoch, rows)
        report = {"epoch": epoch, "step": state.step, "loss": float(np.mean(losses)) if losses else float("nan"),
                  **_feed_metrics(stats, totals, step_seconds, topo)}
        for probe in probes:
            report.update(probe.epoch_metrics(topo))
        if end.evaluate:
            report.update(_evaluate_on_rank0(run, runner, topo, model if topo.rank == 0 else None, val_set,
                                             device, write_last=end.finished))
        with tempfile.TemporaryDirectory() as folder:
            ckpt = write_shard_checkpoint(Path(folder), runner, topo, cfg, state) if end.checkpoint else None
            ray.train.report(report if topo.rank == 0 else {}, checkpoint=ckpt)
    for probe in probes:
        probe.close()


def _checkpoint_mid_epoch(run: TrainingRun, runner: PipelineRunner, topo: Topology, epoch: int, batches_done: int,
                          rows: int) -> None:
    """`train.checkpoint_every_steps`: a stage checkpoint that says the epoch stopped here (every replica's
    rows read so far), so that a replaced worker, or `--resume`, goes on at the next batch. `rows`: what
    this rank's first stage read of the epoch, at a step boundary (the feed holds no row back there)."""
    snapshot = run.state.cut_at(epoch, batches_done, _rows_read(rows, topo))
    with tempfile.TemporaryDirectory() as folder:
        ckpt = write_shard_checkpoint(Path(folder), runner, topo, run.cfg, snapshot)
        # no "epoch" key: Tune's schedulers (time_attr="epoch") take this report for a checkpoint, not a result
        ray.train.report({"step": run.state.step} if topo.rank == 0 else {}, checkpoint=ckpt)


def _restore(plan: WorkerPlan, runner: PipelineRunner, topo: Topology) -> RunState:
    """The state this attempt starts from: Ray Train's checkpoint after a worker failure, else the
    previous run's (`--resume`), else a new run."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_shards(Path(folder), runner)
    elif plan.resume_from is not None:
        state = load_shards(plan.resume_from, runner)
    else:
        return RunState(total_steps=plan.total_steps)
    log.info("rank %d resumed at step %d (epoch %d)", topo.rank, state.step, state.epoch)
    return state


def _epoch_batches(records: list, cfg: Config, epoch: int, topo: Topology, rows_before: int, stats: FeedStats,
                   preencoded: list | None = None):
    """The first stage's full batches of this epoch from Ray Data (rows read before a cut are skipped), or
    the pre-encoded batches cycled for as many steps as an epoch has."""
    if not topo.first:
        return iter(())
    per_replica = cfg.train.batch_size // cfg.pipeline.data_parallel
    if preencoded is not None:
        steps = steps_per_epoch(len(records), cfg.train.batch_size) - rows_before // per_replica
        stats.seen += steps * per_replica
        return itertools.islice(itertools.cycle(preencoded), steps)
    rows = replica_rows(records, cfg, epoch, topo.replica)[rows_before:]
    return full_batches(dataset_blocks(epoch_dataset(rows, cfg, epoch)), per_replica, stats)


def _quiet_ray_train_reports() -> None:
    """Ray Train logs every report of every worker twice at INFO: "Reporting training result" with the
    whole metrics dict, and "Checkpoint successfully created", which reached the driver late, after its
    summary. Our epoch lines say the same once; the driver names the last checkpoint."""
    for module in RAY_REPORT_LOGGERS:
        spec = importlib.util.find_spec(module)
        if spec is not None:
            # context.py names its logger by its file path, storage.py by its module name
            for name in (module, spec.origin):
                logging.getLogger(name).setLevel(logging.WARNING)


def _announce(run: TrainingRun, topo: Topology, device: torch.device) -> None:
    """`run_dir/workers/rank<r>.json`: which process and node hosts which stage (for operators, and tests)."""
    folder = run.dir.workers
    folder.mkdir(parents=True, exist_ok=True)
    info = {"rank": topo.rank, "stage": topo.stage, "replica": topo.replica, "pid": os.getpid(),
            "started_at_step": run.state.step,
            "host": socket.gethostname(), "node_ip": ray.util.get_node_ip_address(), "device": str(device)}
    (folder / f"rank{topo.rank}.json").write_text(json.dumps(info))
    log.info("rank %d: stage %d of replica %d, pid %d on %s (%s)", topo.rank, topo.stage, topo.replica,
             info["pid"], info["node_ip"], device)


def _rows_before(state: RunState, topo: Topology, cfg: Config) -> int:
    """Rows of the cut epoch this replica read before the run was cut (0 when the epoch is new)."""
    if not state.epoch_batches_done:
        return 0
    if len(state.epoch_rows_done) == topo.replicas:
        return state.epoch_rows_done[topo.replica]
    # resumed with another pipeline.data_parallel: the replicas' rows are cut anew from the same global
    # batches, exact unless bad images were dropped before the cut
    return state.epoch_batches_done * (cfg.train.batch_size // cfg.pipeline.data_parallel)


def _rows_read(rows: int, topo: Topology) -> list[int]:
    """Every replica's count of rows read this epoch (`rows` from its first stage, 0 from other stages)."""
    counts = torch.zeros(topo.replicas, dtype=torch.int64)
    counts[topo.replica] = rows
    dist.all_reduce(counts)
    return counts.tolist()


def _all_have_batch(have: bool) -> bool:
    """Every replica's first stage has a batch (so all ranks take this step together)."""
    flag = torch.tensor([1 if have else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _exchange_batch(batch: dict[str, np.ndarray] | None, topo: Topology, runner: PipelineRunner, cfg: Config
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(images on the first stage, packed targets on the stage that holds the loss, image ids on both)."""
    images = packed = ids = None
    per_replica = cfg.train.batch_size // cfg.pipeline.data_parallel
    if topo.first:
        images = torch.from_numpy(batch["image"])
        packed = runner.packer.pack({k: torch.from_numpy(batch[k]) for k, _, _ in runner.packer.layout})
        ids = torch.from_numpy(batch["image_id"]).to(torch.int64)
        if not topo.holds_loss:
            dist.send(packed.contiguous(), dst=topo.loss_rank)
            dist.send(ids, dst=topo.loss_rank)
    elif topo.holds_loss:
        packed = torch.empty(per_replica, runner.packer.width, dtype=torch.float32)
        ids = torch.empty(per_replica, dtype=torch.int64)
        first = topo.rank_of(topo.replica, 0)
        dist.recv(packed, src=first)
        dist.recv(ids, src=first)
    return images, (packed if topo.holds_loss else None), ids


def _evaluate_on_rank0(run: TrainingRun, runner: PipelineRunner, topo: Topology, model, val_set, device,
                       write_last: bool) -> dict[str, float]:
    """Gather replica 0's stage shards to rank 0, which evaluates the whole model on the validation split
    and records it (`TrainingRun.evaluated`: the best keeps `checkpoint_best.pt`); with `write_last` (the
    run's end) the weights also go to `checkpoint_last.pt` for `pgnet eval` and `pgnet predict`. Resuming
    uses the stage shards. Every rank learns the best metric."""
    shard = {k: v.cpu() for k, v in runner.shard()["model"].items()} if topo.replica == 0 else None
    gathered = [None] * dist.get_world_size() if topo.rank == 0 else None
    dist.gather_object(shard, gathered, dst=0)
    metrics: dict[str, float] = {}
    cfg, state = run.cfg, run.state
    if topo.rank == 0:
        weights = {}
        for part in gathered:
            weights.update(part or {})
        model.load_state_dict(weights)
        metrics, results = evaluate_model(model.to(device), val_set, cfg.eval, device, progress=False,
                                          precision=cfg.train.precision)
        runner.train()
        run.evaluated(metrics, results, lambda: checkpoint_dict(cfg, state, weights))
        if write_last:  # after the best: `best` includes this evaluation
            run.save_last(checkpoint_dict(cfg, state, weights))
    best = [state.best]
    dist.broadcast_object_list(best, src=0)
    state.best = best[0]
    return metrics


def _feed_metrics(stats: FeedStats, totals: FeedStats, step_seconds: list[float], topo: Topology) -> dict[str, float]:
    """The epoch's data-wait fraction (first stage of replica 0), and images read and skipped so far (all
    replicas)."""
    values = torch.zeros(4, dtype=torch.float64)
    if topo.first:
        values[2], values[3] = totals.seen, totals.bad
        if topo.replica == 0 and step_seconds:
            values[0], values[1] = stats.wait_seconds, sum(step_seconds)
    dist.all_reduce(values)
    return {"data/wait_fraction": float(values[0] / values[1]) if values[1] > 0 else 0.0,
            "data/images": float(values[2]), "data/bad_images": float(values[3])}
