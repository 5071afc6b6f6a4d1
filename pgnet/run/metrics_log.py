"""A run's JSON-lines logs: `metrics.jsonl` (one record per step) and `evaluations.jsonl` (`pgnet.run.layout`).

Every trainer (single process or pipeline) writes the same records through
`step_record`, so their logs can be compared line by line.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from pgnet.atomic import write_text_atomic


WALL_CLOCK_KEYS = ("images_per_s", "data/wait_s", "time")  # what differs between two runs that train identically


def step_record(step: int, epoch: int, loss: float, terms: dict[str, float], lr: float,
                images_per_s: float, extra: dict[str, float] | None = None) -> dict[str, Any]:
    """One training step: `step` counts optimiser updates from 1, `epoch` from 1; `extra`: more numbers of the step
    (`data/wait_s`); `time` is when it ended (Unix seconds), which trackers show however late the record reaches
    them."""
    record: dict[str, Any] = {"step": step, "epoch": epoch, "loss": float(loss)}
    record.update({f"loss/{name}": float(value) for name, value in terms.items()})
    record["lr"] = float(lr)
    record["images_per_s"] = round(float(images_per_s), 3)
    record.update({key: round(float(value), 6) for key, value in (extra or {}).items()})
    record["time"] = wall_time()
    return record


def wall_time() -> float:
    """Now, in Unix seconds to the millisecond: a record's `time`."""
    return round(time.time(), 3)


class JsonlLog:
    """Append-only JSON lines; on resume, records past the checkpoint's step are dropped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(_finite(record)) + "\n")

    def read(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)

    def truncate_after(self, step: int) -> None:
        """Keep the records with `record["step"] <= step` (what a resumed run has not redone)."""
        if not self.path.exists():
            return
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: write non-finite floats as null (the record still says the step happened)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
