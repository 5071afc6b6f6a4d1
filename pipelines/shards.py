"""Pipeline checkpoints: one shard per stage plus `meta.pt`, merged on load whatever the stage count.

A shard holds its units' weights under the full model's names, its optimiser
state keyed by parameter name, and the schedule state; `meta.pt` holds the
config, epoch, step and best metric. Ray Train merges the workers' files into
one checkpoint folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ray.train import Checkpoint

from pgnet.config import Config
from pipelines.pipeline_step import PipelineRunner
from pipelines.topology import Topology

META = "meta.pt"


def shard_name(stage: int) -> str:
    return f"stage_{stage}.pt"


def write_shard_checkpoint(folder: Path, runner: PipelineRunner, topo: Topology, cfg: Config,
                           state: dict[str, Any]) -> Checkpoint | None:
    """Replica 0 of each stage writes its shard, rank 0 the meta; other replicas add nothing."""
    if topo.replica != 0:
        return None
    torch.save(runner.shard(), folder / shard_name(topo.stage))
    if topo.rank == 0:
        torch.save({"config": cfg.to_dict(), "stages": topo.stages, **state}, folder / META)
    return Checkpoint.from_directory(str(folder))


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any], Any]:
    """(meta, full model state, named optimiser state, scheduler state) from a checkpoint folder."""
    meta_file = folder / META
    shards = sorted(folder.glob("stage_*.pt"))
    if not meta_file.exists() or not shards:
        raise FileNotFoundError(f"{folder} is not a pipeline checkpoint (needs {META} and stage_*.pt)")
    meta = torch.load(meta_file, map_location="cpu", weights_only=False)
    if len(shards) != meta["stages"]:
        raise ValueError(f"{folder} holds {len(shards)} stage shards but was written with {meta['stages']} "
                         "stages: the checkpoint is incomplete")
    model, optimizer_state, scheduler = {}, {"state": {}, "param_groups": None}, None
    for path in shards:
        shard = torch.load(path, map_location="cpu", weights_only=False)
        model.update(shard["model"])
        optimizer_state["state"].update(shard["optimizer"]["state"])
        optimizer_state["param_groups"] = optimizer_state["param_groups"] or shard["optimizer"]["param_groups"]
        scheduler = scheduler or shard["scheduler"]
    return meta, model, optimizer_state, scheduler


def load_shards(folder: Path, runner: PipelineRunner) -> dict[str, Any]:
    """Load this rank's stage(s) from a checkpoint written with any stage count; returns the run state."""
    meta, model, optimizer_state, scheduler = read_checkpoint(folder)
    runner.load(model, optimizer_state, scheduler, step=meta["step"])
    return {"epoch": meta["epoch"], "step": meta["step"], "best": meta.get("best", float("-inf")),
            "epoch_batches_done": meta.get("epoch_batches_done", 0), "epoch_rows_done": meta.get("epoch_rows_done", [])}
