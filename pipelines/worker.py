"""The Ray Train worker loop of pipeline-parallel PGNet training (one worker = one stage of one replica).

Per step: the replica's first stage pulls a batch from Ray Data and ships its
targets to the last stage; the schedule runs the micro-batches; every rank
learns the loss. Per epoch: rank 0 evaluates the gathered model; every stage
saves its shard and all workers report together.
"""
from __future__ import annotations

import importlib.util
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist

from pgnet.atomic import write_json_atomic
from pgnet.checkpoint import save_atomic
from pgnet.config import Config, config_from_dict
from pgnet.engine import evaluate_model
from pgnet.metrics_log import EVALUATIONS_FILE, METRICS_FILE, JsonlLog, step_record
from pgnet.train import (BEST_CHECKPOINT, BEST_METRIC, BEST_PREDICTIONS, LAST_CHECKPOINT, BadSampleBudget, seeded_model,
                         training_datasets)
from pipelines.data_feed import FeedStats, epoch_dataset, full_batches, replica_rows
from pipelines.memory import SavedActivationMeter
from pipelines.pipeline_step import PipelineRunner
from pipelines.shards import load_shards, write_shard_checkpoint
from pipelines.topology import Topology, make_groups

log = logging.getLogger("pgnet.worker")

# Ray Train modules whose INFO lines repeat every report (see `_quiet_ray_train_reports`)
RAY_REPORT_LOGGERS = ("ray.train.v2._internal.execution.context", "ray.train.v2._internal.execution.storage")
UNCUT = {"epoch_batches_done": 0, "epoch_rows_done": []}  # the run state's mark of a complete epoch


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker; `config` comes from `pipelines.pipeline_train`."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _quiet_ray_train_reports()
    cfg = config_from_dict(config["config"], "pipeline config")
    run_dir = Path(config["run_dir"])
    ctx = ray.train.get_context()
    topo = Topology(cfg.pipeline.stages, cfg.pipeline.data_parallel, ctx.get_world_rank())
    torch.set_num_threads(max(1, cfg.train.threads or int(cfg.ray.cpus_per_worker)))
    groups = make_groups(topo)
    device = ray.train.torch.get_device()
    records = ray.get(config["records"]) if topo.first else []
    steps_total = config["total_steps"]

    model = seeded_model(cfg)
    runner = PipelineRunner(cfg, topo, groups, model, config["balance"], steps_total, device)
    if topo.rank != 0:
        del model  # only the stage modules stay alive here
    state = {"epoch": 0, "step": 0, "best": float("-inf"), **UNCUT}
    checkpoint = ray.train.get_checkpoint()  # set when Ray Train restarts this run after a failure
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_shards(Path(folder), runner)
    elif config.get("resume_from"):  # `pgnet train --resume`: the previous run's newest checkpoint
        state = load_shards(Path(config["resume_from"]), runner)
    if state["step"]:
        log.info("rank %d resumed at step %d (epoch %d)", topo.rank, state["step"], state["epoch"])

    metrics_log = JsonlLog(run_dir / METRICS_FILE) if topo.rank == 0 else None
    eval_log = JsonlLog(run_dir / EVALUATIONS_FILE) if topo.rank == 0 else None
    if topo.rank == 0:
        metrics_log.truncate_after(state["step"])
        eval_log.truncate_after(state["step"])
        _, val_set = training_datasets(cfg, progress=False)
    _announce(run_dir, topo, device)
    hooks = _mlflow_hooks(config) if topo.rank == 0 else None
    trace = _trace_file(run_dir, topo) if config.get("trace_samples") else None
    meter = SavedActivationMeter() if config.get("measure_memory") else None

    runner.train()
    budget = BadSampleBudget(cfg.data.max_bad_fraction)
    per_replica = cfg.train.batch_size // cfg.pipeline.data_parallel
    totals = FeedStats()  # images read and skipped since this attempt started
    while state["step"] < steps_total and (state["epoch"] < cfg.train.epochs or state["epoch_batches_done"]):
        # a run extended after max_steps cut its epoch short goes on with that epoch, past the rows it read
        done = state["epoch_batches_done"]
        epoch = state["epoch"] if done else state["epoch"] + 1
        rows_before = _rows_before(state, topo, per_replica)
        stats = FeedStats()
        batches = None
        if topo.first:
            rows = replica_rows(records, cfg, epoch, topo.replica)[rows_before:]
            batches = full_batches(epoch_dataset(rows, cfg, epoch), per_replica, stats)
        epoch_losses, tick, step_seconds = [], time.perf_counter(), []
        while state["step"] < steps_total:
            batch = next(batches, None) if topo.first else None
            if not _all_have_batch(batch is not None or not topo.first):
                break
            images, packed, ids = _exchange_batch(batch, topo, runner, per_replica)
            if trace is not None:
                _trace(trace, state["step"] + 1, ids, images, packed, topo)
            if meter is not None:
                with meter:
                    loss, terms, lr = runner.step(images, packed)
            else:
                loss, terms, lr = runner.step(images, packed)
            state["step"] += 1
            now = time.perf_counter()
            step_seconds.append(now - tick)
            record = step_record(state["step"], epoch, loss, terms, lr, cfg.train.batch_size / (now - tick))
            tick = now
            epoch_losses.append(loss)
            if topo.rank == 0:
                metrics_log.append(record)
                if hooks is not None:
                    hooks.on_step(record)
                if state["step"] % cfg.train.log_every == 0 or state["step"] == 1:
                    log.info("epoch %d step %d/%d loss %.4f lr %.2e %.1f images/s", epoch, state["step"],
                             steps_total, loss, lr, record["images_per_s"])
        if topo.first:
            budget.add(stats.seen, stats.bad)
            budget.check()  # the end of a pass: judge the fraction even on a replica's share below min_seen
            totals.seen, totals.bad = totals.seen + stats.seen, totals.bad + stats.bad
        if done and not epoch_losses:  # the cut came at the epoch's last batch: it was complete after all
            state.update(epoch=epoch, **UNCUT)
            continue
        state["epoch"] = epoch
        batches_done = done + len(epoch_losses)
        if state["step"] >= steps_total and batches_done < config["steps_per_epoch"]:  # cut short by max_steps
            state["epoch_batches_done"] = batches_done
            state["epoch_rows_done"] = _rows_read(rows_before + stats.seen if topo.first else 0, topo)
        else:
            state.update(UNCUT)
        # bad images make epochs shorter (batches stay full), so the epoch count can end the run first
        finished = state["step"] >= steps_total or epoch >= cfg.train.epochs
        report = {"epoch": epoch, "step": state["step"],
                  "loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
                  **_feed_metrics(stats, totals, step_seconds, meter, topo)}
        if finished or epoch % cfg.train.eval_every == 0:
            metrics = _evaluate_on_rank0(runner, topo, cfg, model if topo.rank == 0 else None,
                                         val_set if topo.rank == 0 else None, device, state, run_dir,
                                         write_last=finished)
            if topo.rank == 0:
                report.update(metrics)
                eval_record = {"step": state["step"], "epoch": epoch, **metrics}
                eval_log.append(eval_record)
                if hooks is not None:
                    hooks.on_eval(eval_record)
        if hooks is not None:
            hooks.flush()
        save = finished or epoch % cfg.train.checkpoint_every == 0
        with tempfile.TemporaryDirectory() as folder:
            ckpt = write_shard_checkpoint(Path(folder), runner, topo, cfg, state) if save else None
            ray.train.report(report if topo.rank == 0 else {}, checkpoint=ckpt)
    if trace is not None:
        trace.close()


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


def _announce(run_dir: Path, topo: Topology, device: torch.device) -> None:
    """`run_dir/workers/rank<r>.json`: which process and node hosts which stage (for operators, and tests)."""
    import json
    import os
    import socket
    folder = run_dir / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    info = {"rank": topo.rank, "stage": topo.stage, "replica": topo.replica, "pid": os.getpid(),
            "host": socket.gethostname(), "node_ip": ray.util.get_node_ip_address(), "device": str(device)}
    (folder / f"rank{topo.rank}.json").write_text(json.dumps(info))
    log.info("rank %d: stage %d of replica %d, pid %d on %s (%s)", topo.rank, topo.stage, topo.replica,
             info["pid"], info["node_ip"], device)


def _mlflow_hooks(config: dict[str, Any]):
    """Rank 0 streams step and evaluation metrics into the driver's MLflow run."""
    if not config.get("mlflow_run_id"):
        return None
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import MlflowHooks
    return MlflowHooks(MlflowClient(config["mlflow_uri"]), config["mlflow_run_id"])


def _rows_before(state: dict, topo: Topology, per_replica: int) -> int:
    """Rows of the cut epoch this replica read before the run was cut (0 when the epoch is new)."""
    if not state["epoch_batches_done"]:
        return 0
    if len(state["epoch_rows_done"]) == topo.replicas:
        return state["epoch_rows_done"][topo.replica]
    # resumed with another pipeline.data_parallel: the replicas' rows are cut anew from the same global
    # batches, exact unless bad images were dropped before the cut
    return state["epoch_batches_done"] * per_replica


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


def _exchange_batch(batch: dict[str, np.ndarray] | None, topo: Topology, runner: PipelineRunner,
                    per_replica: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(images on the first stage, packed targets on the last stage, image ids on both)."""
    images = packed = ids = None
    if topo.first:
        images = torch.from_numpy(batch["image"])
        packed = runner.packer.pack({k: torch.from_numpy(batch[k]) for k, _, _ in runner.packer.layout})
        ids = torch.from_numpy(batch["image_id"]).to(torch.int64)
        if not topo.last:
            dist.send(packed.contiguous(), dst=topo.last_stage_rank)
            dist.send(ids, dst=topo.last_stage_rank)
    elif topo.last:
        packed = torch.empty(per_replica, runner.packer.width, dtype=torch.float32)
        ids = torch.empty(per_replica, dtype=torch.int64)
        first = topo.rank_of(topo.replica, 0)
        dist.recv(packed, src=first)
        dist.recv(ids, src=first)
    return images, (packed if topo.last else None), ids


def _evaluate_on_rank0(runner: PipelineRunner, topo: Topology, cfg: Config, model, val_set, device,
                       state: dict, run_dir: Path, write_last: bool) -> dict[str, float]:
    """Gather replica 0's stage shards to rank 0, which evaluates the whole model on the validation split,
    and keeps it as `checkpoint_best.pt` when it is the best so far and as `checkpoint_last.pt` with
    `write_last` (the run's end): weights for `pgnet eval` and `pgnet predict`; resuming uses the shards."""
    shard = {k: v.cpu() for k, v in runner.shard()["model"].items()} if topo.replica == 0 else None
    gathered = [None] * dist.get_world_size() if topo.rank == 0 else None
    dist.gather_object(shard, gathered, dst=0)
    metrics: dict[str, float] = {}
    if topo.rank == 0:
        full = {}
        for part in gathered:
            full.update(part or {})
        model.load_state_dict(full)
        metrics, results = evaluate_model(model.to(device), val_set, cfg.eval, device, progress=False,
                                          precision=cfg.train.precision)
        runner.train()
        if metrics.get(BEST_METRIC, float("-inf")) > state["best"]:
            state["best"] = metrics[BEST_METRIC]
            write_json_atomic(results, run_dir / BEST_PREDICTIONS)
            save_atomic(_weights(full, cfg, state), run_dir / BEST_CHECKPOINT)
        if write_last:  # after the best: `best` includes this evaluation
            save_atomic(_weights(full, cfg, state), run_dir / LAST_CHECKPOINT)
        log.info("epoch %d: keypoints/AP %.4f bbox/AP %.4f", state["epoch"], metrics.get("keypoints/AP", -1),
                 metrics.get("bbox/AP", -1))
    best = [state["best"]]
    dist.broadcast_object_list(best, src=0)
    state["best"] = best[0]
    return metrics


def _weights(model_state: dict, cfg: Config, state: dict) -> dict:
    return {"model": model_state, "config": cfg.to_dict(), "epoch": state["epoch"], "step": state["step"],
            "best": state["best"]}


def _feed_metrics(stats: FeedStats, totals: FeedStats, step_seconds: list[float], meter,
                  topo: Topology) -> dict[str, float]:
    """The epoch's data-wait fraction (first stage of replica 0), images read and skipped so far (all
    replicas), and with a meter the peak saved activations of each stage (replica 0)."""
    values = torch.zeros(4 + topo.stages, dtype=torch.float64)
    if topo.first:
        values[2], values[3] = totals.seen, totals.bad
        if topo.replica == 0 and step_seconds:
            values[0], values[1] = stats.wait_seconds, sum(step_seconds)
    if meter is not None and topo.replica == 0:
        values[4 + topo.stage] = meter.peak_bytes / 2**20
    dist.all_reduce(values)
    out = {"data/wait_fraction": float(values[0] / values[1]) if values[1] > 0 else 0.0,
           "data/images": float(values[2]), "data/bad_images": float(values[3])}
    if meter is not None:
        out.update({f"memory/peak_activation_mb/stage{s}": float(values[4 + s]) for s in range(topo.stages)})
    return out


def _trace_file(run_dir: Path, topo: Topology):
    folder = run_dir / "sample_trace"
    folder.mkdir(parents=True, exist_ok=True)
    return (folder / f"rank{topo.rank}.jsonl").open("a")


def _trace(file, step: int, ids, images, packed, topo: Topology) -> None:
    """What this stage saw: image ids, and a checksum of its images (first) or targets (last)."""
    import json
    entry = {"step": step, "stage": topo.stage, "replica": topo.replica, "ids": ids.tolist() if ids is not None else []}
    if images is not None:
        entry["image_sum"] = float(images.double().sum())
    if packed is not None and topo.last:
        entry["target_sum"] = float(packed.double().sum())
    file.write(json.dumps(entry) + "\n")
    file.flush()
