"""Checkpoints as plain dicts a person can open with `torch.load`, written atomically.

A single-process checkpoint is `{model, optimizer, scheduler, config, epoch,
step}`. Pipeline stages save shards of the same dict; `merge_shards` joins them.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pgnet.atomic import atomic_path


def save_atomic(obj: Any, path: str | Path) -> Path:
    """`torch.save`, atomically: never a torn checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def read_torch_file(path: str | Path, *, weights_only: bool, what: str) -> Any:
    """`torch.load` to CPU; a file that is not a torch save is a ValueError naming it and `what` it should be."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"'{path}' cannot be read by torch.load ({first_line}); pass {what}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("checkpoint_*.pt"))
        hint = f"the run's own: {', '.join(str(path / f) for f in found)}" if found else \
            "run_dir/checkpoint_last.pt or checkpoint_best.pt"
        raise FileNotFoundError(f"checkpoint '{path}' is a folder; pass a checkpoint file written by `pgnet train` "
                                f"({hint})")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' not found; pass a file written by `pgnet train` "
                                "(run_dir/checkpoint_last.pt or checkpoint_best.pt)")
    ckpt = read_torch_file(path, weights_only=False, what="a checkpoint written by `pgnet train`")
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"'{path}' is not a PGNet checkpoint (expected a dict with a 'model' entry)")
    return ckpt


def named_optimizer_state(optimizer: torch.optim.Optimizer,
                          named_params: list[tuple[str, nn.Parameter]]) -> dict[str, Any]:
    """Optimiser state keyed by parameter name, so it can be re-sharded over another stage count."""
    sd = optimizer.state_dict()
    ids = [i for group in sd["param_groups"] for i in group["params"]]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    name_of = {id(p): n for n, p in named_params}
    names = [name_of[id(p)] for p in params]
    index_to_name = dict(zip(ids, names))
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
