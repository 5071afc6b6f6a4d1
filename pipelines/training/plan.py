"""What the driver hands every Ray Train worker of a pipeline run: one typed `WorkerPlan`.

Ray Train passes a dict to the workers (`train_loop_config`); it carries this plan under
`PLAN_KEY` and nothing else, so the workers' inputs are named, typed and documented here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgnet.config import Config

PLAN_KEY = "plan"


@dataclass(frozen=True)
class WorkerPlan:
    cfg: Config  # the run's config, data paths absolute (workers run in Ray's session folder)
    run_dir: Path  # the run directory (`pgnet.run.layout`), on a file system every worker sees
    records: Any  # ray.ObjectRef of the training split's `ImageRecord`s, read once by the driver
    balance: tuple[int, ...]  # units per pipeline piece (stages x virtual stages)
    total_steps: int  # the run's planned length
    steps_per_epoch: int  # full batches per epoch
    resume_from: Path | None = None  # a stage-checkpoint folder to continue from (`pgnet train --resume`)
    # Objects every worker runs beside its steps (`pipelines.training.probes.Probe`): what tests and
    # benchmarks observe, kept out of the loop itself.
    probes: tuple = field(default=())
    # ray.ObjectRef of a list of full batches encoded once by the driver (`data_feed.encoded_batches`), which
    # the first stages cycle in place of Ray Data: a benchmark's feed that costs nothing. None: Ray Data.
    preencoded: Any = None

    def as_loop_config(self) -> dict[str, Any]:
        return {PLAN_KEY: self}
