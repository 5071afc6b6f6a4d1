"""The planner's cost table: per unit of `PGNet.units()`, what one micro-batch costs, and its JSON form.

A cost-table file is a JSON object whose `"unit_costs"` key holds one row per unit, in order (other
top-level keys are ignored, so a `pgnet bench pipeline --out` record that carries `"unit_costs"` is a
cost table too). Every row says at which micro-batch and input size it was measured; the planner scales
bytes, FLOPs and times (but for their fixed parts) linearly in images and in pixels to the plan's
micro-batch and input size.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgnet.errors import ConfigError, MissingFileError


@dataclass(frozen=True)
class UnitCost:
    name: str  # the unit's module path in PGNet (`backbone.layer3.0`)
    microbatch: int  # images in the measured micro-batch
    input_size: tuple[int, int]  # (height, width) of the measured images
    forward_s: float  # forward seconds
    backward_input_s: float  # backward seconds for the unit's input gradients (what the previous stage waits for)
    backward_weight_s: float  # backward seconds for the parameters' gradients (full backward minus the input part)
    send_bytes: int  # the bus after this unit, float32 as stages send it (= the gradient coming back)
    param_bytes: int  # the unit's parameters
    saved_bytes: int  # tensors autograd saves for backward in the forward (parameters and the unit's inputs excluded)
    forward_flops: float = 0.0  # torch.utils.flop_counter.FlopCounterMode: matmuls and convolutions, 2 per MAC
    backward_flops: float = 0.0  # the whole backward
    backward_input_flops: float = 0.0  # the part the input gradients take (the rest computes weight gradients)
    # the parts of forward_s, backward_input_s, backward_weight_s that do not grow with images or pixels
    # (per-call overheads; fitted from two micro-batch sizes): the rest scales linearly
    forward_fixed_s: float = 0.0
    backward_input_fixed_s: float = 0.0
    backward_weight_fixed_s: float = 0.0
    sync_norms: int = 0  # synchronised norm layers (model.norm=syncbn): one all-reduce each per forward and backward
    sync_norm_bytes: int = 0  # the bytes those forward all-reduces carry together (per-channel sums)
    optimizer_s: float = 0.0  # one optimiser update of the unit's parameters (once per step, whatever the batch)
    # the input- and weight-gradient passes as the zero-bubble schedules run them (torch's split backward, dearer
    # than one fused backward on a CPU); 0: backward_input_s and backward_weight_s
    split_input_s: float = 0.0
    split_weight_s: float = 0.0

    @property
    def backward_s(self) -> float:
        return self.backward_input_s + self.backward_weight_s

    @property
    def seconds(self) -> float:
        """Forward + backward: what `pipelines.training.balance.partition` cuts by."""
        return self.forward_s + self.backward_s

    def scaled(self, images: float, pixels: float, time: float) -> UnitCost:
        """This cost with `images` x the micro-batch, `pixels` x the pixels per image, `time` x every duration
        (the fixed parts of the times stay fixed)."""
        work = images * pixels

        def grow(total: float, fixed: float) -> float:
            return (fixed + (total - fixed) * work) * time
        return dataclasses.replace(
            self, forward_s=grow(self.forward_s, self.forward_fixed_s),
            backward_input_s=grow(self.backward_input_s, self.backward_input_fixed_s),
            backward_weight_s=grow(self.backward_weight_s, self.backward_weight_fixed_s),
            forward_fixed_s=self.forward_fixed_s * time, backward_input_fixed_s=self.backward_input_fixed_s * time,
            backward_weight_fixed_s=self.backward_weight_fixed_s * time, optimizer_s=self.optimizer_s * time,
            split_input_s=self.split_input_s * work * time, split_weight_s=self.split_weight_s * work * time,
            send_bytes=round(self.send_bytes * work),
            saved_bytes=round(self.saved_bytes * work), forward_flops=self.forward_flops * work,
            backward_flops=self.backward_flops * work, backward_input_flops=self.backward_input_flops * work)


@dataclass(frozen=True)
class CostTable:
    units: tuple[UnitCost, ...]

    def __post_init__(self):
        if not self.units:
            raise ConfigError("a cost table needs at least one unit")
        first = self.units[0]
        for u in self.units:
            if (u.microbatch, tuple(u.input_size)) != (first.microbatch, tuple(first.input_size)):
                raise ConfigError(f"cost table: unit {u.name!r} was measured at micro-batch {u.microbatch}, "
                                  f"{list(u.input_size)}, the first at {first.microbatch}, {list(first.input_size)}; "
                                  "all units must share one micro-batch and input size")

    @property
    def microbatch(self) -> int:
        return self.units[0].microbatch

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.units[0].input_size)

    def total_flops(self) -> float:
        """Forward + backward FLOPs of the whole network for one micro-batch."""
        return sum(u.forward_flops + u.backward_flops for u in self.units)

    def at(self, microbatch: float, input_size: Sequence[int], time: float = 1.0) -> CostTable:
        """The table scaled to `microbatch` images of `input_size` (linear in images and in pixels: exact for
        the bytes and FLOPs of this fully convolutional network, a model for the times), durations x `time`."""
        h, w = self.input_size
        pixels = input_size[0] * input_size[1] / (h * w)
        units = tuple(dataclasses.replace(u.scaled(microbatch / u.microbatch, pixels, time),
                                          microbatch=microbatch, input_size=tuple(input_size)) for u in self.units)
        return CostTable(units)

    def input_bytes(self) -> int:
        """The first stage's input: the images of one micro-batch, float32 RGB."""
        h, w = self.input_size
        return round(self.microbatch * 3 * h * w * 4)


ROW_FIELDS = {f.name for f in dataclasses.fields(UnitCost)}
REQUIRED = {f.name for f in dataclasses.fields(UnitCost) if f.default is dataclasses.MISSING}


def table_to_json(table: CostTable) -> list[dict[str, Any]]:
    return [{**dataclasses.asdict(u), "input_size": list(u.input_size)} for u in table.units]


def table_from_json(rows: Any, source: str) -> CostTable:
    """A CostTable from the `"unit_costs"` list; a ConfigError naming the row and key otherwise."""
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{source}: \"unit_costs\" must be a non-empty list of unit rows")
    units = []
    for i, row in enumerate(rows):
        where = f"{source}: unit_costs[{i}]"
        if not isinstance(row, dict):
            raise ConfigError(f"{where} must be an object, got {type(row).__name__}")
        unknown, missing = sorted(set(row) - ROW_FIELDS), sorted(REQUIRED - set(row))
        if unknown or missing:
            problem = f"unknown key {unknown[0]!r}" if unknown else f"missing key {missing[0]!r}"
            raise ConfigError(f"{where}: {problem} (keys: {', '.join(sorted(ROW_FIELDS))})")
        values = dict(row)
        if not isinstance(values["name"], str):
            raise ConfigError(f"{where}.name must be a string")
        size = values["input_size"]
        if not (isinstance(size, list) and len(size) == 2 and all(_positive_int(v) for v in size)):
            raise ConfigError(f"{where}.input_size must be [height, width] in pixels, got {size!r}")
        values["input_size"] = tuple(size)
        for key in ROW_FIELDS - {"name", "input_size"}:
            if key in values and not _non_negative(values[key]):
                raise ConfigError(f"{where}.{key} must be a finite number >= 0, got {values[key]!r}")
        if not _positive_int(values["microbatch"]):
            raise ConfigError(f"{where}.microbatch must be a positive whole number, got {values['microbatch']!r}")
        units.append(UnitCost(**values))
    return CostTable(tuple(units))


def save_cost_table(table: CostTable, path: str | Path, source: dict[str, Any] | None = None) -> None:
    Path(path).write_text(json.dumps({"unit_costs": table_to_json(table), "source": source or {}}, indent=1) + "\n")


def read_json_record(path: str | Path, keys: Sequence[str], give: str) -> dict[str, Any]:
    """A JSON object file with the top-level `keys` (in a `pgnet bench --out` record: its `"results"` object's
    keys); a missing file, bad JSON or a missing key is a one-line error that ends with what to `give` instead."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file; give {give}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not JSON ({err}); give {give}") from None
    if isinstance(data, dict) and "benchmark" in data and isinstance(data.get("results"), dict):
        data = data["results"]  # a `pgnet bench ... --out` record: what the benchmark returned
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            raise ConfigError(f"{path} has no top-level \"{key}\"; give {give}")
    return data


def load_cost_table(path: str | Path) -> CostTable:
    """The `"unit_costs"` of a JSON file: a saved cost table, or a benchmark record that carries one."""
    data = read_json_record(path, ("unit_costs",), "a cost table written by `pgnet plan --save-costs FILE`, or a "
                                                   "benchmark record that carries one")
    return table_from_json(data["unit_costs"], str(path))


def _non_negative(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
