"""`pipeline.schedule: csv:PATH`: a pipeline schedule written by hand (or dumped by torch) in a CSV file.

The format is torch's compute-only one (`PipelineScheduleMulti._load_csv`, torch 2.14): row r lists
worker r's actions in order, one per cell, each `<stage><F|I|B|W><micro-batch>` (`0F1`: forward of
stage 0 on micro-batch 1; `B` full backward, or `I` input gradient then `W` weight gradient); an
empty cell is an idle slot. torch adds the sends and receives. Which worker runs a stage's actions
places that stage: every worker must hold the same number of stages, and worker 0 stage 0 (it reads
the batches). The file is checked when the config is loaded, against pipeline.stages and
pipeline.microbatches, and its plan simulated, so a schedule that would hang is refused.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.distributed.pipelining.schedules import (
    _Action,
    _PipelineScheduleRuntime,
    _validate_schedule,
)

from pgnet.errors import ConfigError
from pgnet.registry import PIPELINE_SCHEDULES
from pipelines.training.schedules import _StandIn, simulate

PREFIX = "csv:"
ACTION = re.compile(r"(\d+)([FIBW])(\d+)")


@dataclass(frozen=True)
class CsvSchedule:
    """A schedule file, parsed: `rows[r]` is worker r's compute actions (None: idle)."""
    path: Path
    rows: tuple[tuple[_Action | None, ...], ...]
    schedule_class: type = _PipelineScheduleRuntime
    split_backward: bool = False
    multi_stage: bool = False  # as ScheduleSpec: the file, not pipeline.virtual_stages, places the stages
    v_shape: bool = False

    @property
    def num_stages(self) -> int:
        return 1 + max((a.stage_index for row in self.rows for a in row if a is not None), default=-1)

    def placement(self) -> dict[int, list[int]]:
        """worker -> the stages it runs, in the order it first runs them."""
        out: dict[int, list[int]] = {r: [] for r in range(len(self.rows))}
        for worker, row in enumerate(self.rows):
            for action in row:
                if action is not None and action.stage_index not in out[worker]:
                    out[worker].append(action.stage_index)
        return out

    def check(self, pipeline) -> str | None:
        where = f"({self.path})"
        if len(self.rows) != pipeline.stages:
            return (f"{where} has {len(self.rows)} rows, one per worker, but pipeline.stages={pipeline.stages}: "
                    "write one row per worker or change pipeline.stages")
        placement = self.placement()
        counts = {len(stages) for stages in placement.values()}
        held = sorted(s for stages in placement.values() for s in stages)
        if len(counts) != 1 or held != list(range(self.num_stages)):
            return (f"{where} must give every worker the same number of stages, each stage to one worker, stages "
                    f"0..N-1 all used; it places {dict(placement)}")
        if 0 not in placement[0]:
            return f"{where} must place stage 0 on worker 0 (row 1), which reads the batches; it places {dict(placement)}"
        stage_to_worker = {s: w for w, stages in placement.items() for s in stages}
        try:
            _validate_schedule(dict(enumerate(list(r) for r in self.rows)), pipeline.stages, self.num_stages,
                               pipeline.microbatches)
            schedule = self.build([_StandIn(i, self.num_stages, pipeline.stages, 0) for i in placement[0]],
                                  pipeline.microbatches, loss_fn=lambda output, target: output)
            simulate(schedule, self.num_stages)
        except (AssertionError, ValueError, RuntimeError) as err:
            return (f"{where} is not a valid schedule for {pipeline.stages} workers, {self.num_stages} stages "
                    f"(placed {stage_to_worker}) and pipeline.microbatches={pipeline.microbatches}: "
                    f"{str(err).splitlines()[0]}")
        return None

    def virtual_stages(self, requested: int) -> int:
        """Stages per worker: the file's (`pipeline.virtual_stages` does not apply)."""
        return len(self.placement()[0])

    def pieces(self, worker: int, stages: int, requested: int) -> list[int]:
        return self.placement()[worker]

    def build(self, stages: list, microbatches: int, loss_fn: Callable | None):
        schedule = _PipelineScheduleRuntime(stages, n_microbatches=microbatches, loss_fn=loss_fn, scale_grads=True)
        schedule._load_csv(str(self.path))  # torch's own reader and lowering (sends, receives, grad reduction)
        return schedule


def read_schedule_csv(path: str) -> CsvSchedule:
    """Parse a schedule file; ConfigError naming the file, the cell and what is wrong."""
    file = Path(path)
    shown = f"pipeline.schedule={PREFIX}{path}"
    if not path:
        raise ConfigError(f"{shown}: give the schedule file's path after '{PREFIX}'")
    if not file.is_file():
        raise ConfigError(f"{shown}: no such file ({file.absolute()}); write the schedule there or fix the path")
    try:
        with open(file, newline="") as handle:
            table = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"{shown}: cannot read it as CSV ({err})") from None
    rows = []
    for r, cells in enumerate(table):
        row = []
        for c, cell in enumerate(cells):
            text = cell.strip()
            match = ACTION.fullmatch(text)
            if text and not match:
                raise ConfigError(f"{shown}: row {r + 1}, cell {c + 1} is {text!r}, not an action like 0F1 "
                                  "(stage, then F forward, B backward, I input gradient or W weight gradient, then "
                                  "the micro-batch; torch adds the sends and receives)")
            row.append(_Action.from_str(text) if text else None)
        rows.append(tuple(row))
    if not any(a is not None for row in rows for a in row):
        raise ConfigError(f"{shown}: the file holds no action")
    split = any(a is not None and a.computation_type.value in "IW" for row in rows for a in row)
    return CsvSchedule(file.absolute(), tuple(rows), split_backward=split)


PIPELINE_SCHEDULES.register_prefix(PREFIX, read_schedule_csv, shown=f"{PREFIX}PATH")
