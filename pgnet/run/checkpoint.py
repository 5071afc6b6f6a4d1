"""Checkpoints as plain dicts a person can open with `torch.load`: built, written and read here only.

A checkpoint is `{model, optimizer, scheduler, config, <RunState fields>}`: `optimizer` and
`scheduler` only where the file is resumable (the single-process trainer's `checkpoint_last.pt`; `checkpoint_best.pt`
is weights only, for inference; a pipeline run's
resumable state is its stage shards, `pipelines.training.shards`, whose meta file is the same dict
without weights). Files are written atomically and read with `weights_only=True`
(`pgnet.torch_files`): tensors, numbers, strings, lists and dicts, never code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pgnet.config import Config
from pgnet.errors import CheckpointError, MissingFileError
from pgnet.run.state import RunState
from pgnet.torch_files import read_torch_file


def checkpoint_dict(cfg: Config, state: RunState, model: dict[str, torch.Tensor] | None = None,
                    optimizer: dict[str, Any] | None = None, scheduler: dict[str, Any] | None = None,
                    **extra: Any) -> dict[str, Any]:
    """The one shape of every checkpoint: the config as a plain dict, the run state, and what is given."""
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    return {**{k: v for k, v in parts.items() if v is not None}, "config": cfg.to_dict(), **state.to_dict(),
            **extra}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by `pgnet train` (a dict with `model` and `config`), checked."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("checkpoint_*.pt"))
        hint = f"the run's own: {', '.join(str(path / f) for f in found)}" if found else \
            "run_dir/checkpoint_last.pt or checkpoint_best.pt"
        raise MissingFileError(f"checkpoint '{path}' is a folder; pass a checkpoint file written by `pgnet train` "
                               f"({hint})")
    if not path.is_file():
        raise MissingFileError(f"checkpoint '{path}' not found; pass a file written by `pgnet train` "
                               "(run_dir/checkpoint_last.pt or checkpoint_best.pt)")
    ckpt = read_torch_file(path, what="a checkpoint written by `pgnet train`")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or \
            not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"'{path}' is not a PGNet checkpoint (expected a dict with 'model' and 'config')")
    return ckpt


def named_optimizer_state(optimizer: torch.optim.Optimizer,
                          named_params: list[tuple[str, nn.Parameter]]) -> dict[str, Any]:
    """Optimiser state keyed by parameter name, so it can be re-sharded over another stage count."""
    sd = optimizer.state_dict()
    ids = [i for group in sd["param_groups"] for i in group["params"]]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    name_of = {id(p): n for n, p in named_params}
    index_to_name = dict(zip(ids, [name_of[id(p)] for p in params]))
    return {
        "state": {index_to_name[i]: s for i, s in sd["state"].items()},
        "param_groups": [{**{k: v for k, v in g.items() if k != "params"},
                          "params": [index_to_name[i] for i in g["params"]]} for g in sd["param_groups"]],
    }


def load_named_optimizer_state(optimizer: torch.optim.Optimizer,
                               named_params: list[tuple[str, nn.Parameter]],
                               named_state: dict[str, Any]) -> None:
    """Inverse of `named_optimizer_state` for the parameters this optimiser holds."""
    name_of = {id(p): n for n, p in named_params}
    sd = optimizer.state_dict()
    state, index = {}, 0
    for group, saved in zip(sd["param_groups"], named_state["param_groups"]):
        for k, v in saved.items():
            if k != "params":
                group[k] = v
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = name_of[id(p)]
            if name in named_state["state"]:
                state[index] = named_state["state"][name]
            index += 1
    sd["state"] = state
    optimizer.load_state_dict(sd)
