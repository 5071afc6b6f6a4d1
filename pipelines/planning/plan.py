"""One candidate plan: the `pipeline.*` settings of a run, and the `--set` overrides that select it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    stages: int  # S, pipeline.stages (ranks per pipeline)
    data_parallel: int  # D, pipeline.data_parallel
    microbatches: int  # M, pipeline.microbatches
    schedule: str  # pipeline.schedule
    virtual_stages: int  # pipeline pieces per rank (1 for single-stage schedules)
    balance: tuple[int, ...]  # units per piece (stages x virtual stages pieces), pipeline.balance

    @property
    def devices(self) -> int:
        return self.stages * self.data_parallel

    def overrides(self) -> list[str]:
        """`key=value` items for `pgnet train --set` (values without spaces, so a shell splits them well)."""
        items = [f"pipeline.stages={self.stages}", f"pipeline.data_parallel={self.data_parallel}",
                 f"pipeline.microbatches={self.microbatches}", f"pipeline.schedule={self.schedule}",
                 f"pipeline.virtual_stages={self.virtual_stages}"]  # always: the config's default is 2
        return [*items, "pipeline.balance=[" + ",".join(map(str, self.balance)) + "]"]

    def label(self) -> str:
        v = f" V={self.virtual_stages}" if self.virtual_stages > 1 else ""
        return f"S={self.stages} D={self.data_parallel} M={self.microbatches} {self.schedule}{v}"
