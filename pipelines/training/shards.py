"""Pipeline checkpoints: one shard per stage plus `meta.pt`, merged on load whatever the stage count.

A shard holds its units' weights under the full model's names, its optimiser state keyed by
parameter name, and the schedule state; `meta.pt` is the run core's checkpoint dict without
weights (config and run state, `pgnet.run.checkpoint.checkpoint_dict`) plus the stage count.
Ray Train merges the workers' files into one checkpoint folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ray.train import Checkpoint

from pgnet.config import Config
from pgnet.errors import CheckpointError, MissingFileError
from pgnet.run.checkpoint import checkpoint_dict
from pgnet.run.state import RunState
from pgnet.torch_files import read_torch_file, save_atomic
from pipelines.training.runner import PipelineRunner
from pipelines.training.topology import Topology

META = "meta.pt"


def shard_name(stage: int) -> str:
    return f"stage_{stage}.pt"


def write_shard_checkpoint(folder: Path, runner: PipelineRunner, topo: Topology, cfg: Config,
                           state: RunState) -> Checkpoint | None:
    """Replica 0 of each stage writes its shard, rank 0 the meta; other replicas add nothing."""
    if topo.replica != 0:
        return None
    save_atomic(runner.shard(), folder / shard_name(topo.stage))
    if topo.rank == 0:
        save_atomic(checkpoint_dict(cfg, state, stages=topo.stages), folder / META)
    return Checkpoint.from_directory(str(folder))


def read_meta(folder: Path) -> dict[str, Any]:
    return read_torch_file(folder / META, what="a pipeline checkpoint's meta.pt written by `pgnet train`")


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any], Any]:
    """(meta, full model state, named optimiser state, scheduler state) from a checkpoint folder."""
    shards = sorted(folder.glob("stage_*.pt"))
    if not (folder / META).exists() or not shards:
        raise MissingFileError(f"{folder} is not a pipeline checkpoint (needs {META} and stage_*.pt)")
    meta = read_meta(folder)
    if len(shards) != meta["stages"]:
        raise CheckpointError(f"{folder} holds {len(shards)} stage shards but was written with {meta['stages']} "
                              "stages: the checkpoint is incomplete")
    model, optimizer_state, scheduler = {}, {"state": {}, "param_groups": None}, None
    for path in shards:
        shard = read_torch_file(path, what="a pipeline stage shard written by `pgnet train`")
        model.update(shard["model"])
        optimizer_state["state"].update(shard["optimizer"]["state"])
        optimizer_state["param_groups"] = optimizer_state["param_groups"] or shard["optimizer"]["param_groups"]
        scheduler = scheduler or shard["scheduler"]
    return meta, model, optimizer_state, scheduler


def load_shards(folder: Path, runner: PipelineRunner) -> RunState:
    """Load this rank's stage(s) from a checkpoint written with any stage count; returns the run state."""
    meta, model, optimizer_state, scheduler = read_checkpoint(folder)
    runner.load(model, optimizer_state, scheduler, step=meta["step"])
    state = RunState.from_dict(meta)
    state.total_steps = runner.total_steps  # the plan of this run (a resume may extend it)
    return state
