"""A pipeline-worker probe for tests: what each stage saw at each step, written as JSON lines.

`run_dir/sample_trace/rank<r>.jsonl`: the step, the image ids, and a checksum of the stage's
images (first stage) or packed targets (last stage). The equivalence and data-feed tests read it
to check that the stages of a replica agree and the replicas split each batch.
"""
from __future__ import annotations

import json
from pathlib import Path

import ray.cloudpickle

from pipelines.training.probes import Probe, StepView
from pipelines.training.topology import Topology

TRACE_DIR = "sample_trace"


class SampleTraceProbe(Probe):
    def start(self, run_dir, topo: Topology) -> None:
        folder = Path(run_dir) / TRACE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.file = (folder / f"rank{topo.rank}.jsonl").open("a")

    def around_step(self, view: StepView):
        entry = {"step": view.step, "stage": view.topo.stage, "replica": view.topo.replica,
                 "ids": view.image_ids.tolist() if view.image_ids is not None else []}
        if view.images is not None:
            entry["image_sum"] = float(view.images.double().sum())
        if view.packed_targets is not None:
            entry["target_sum"] = float(view.packed_targets.double().sum())
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()
        return super().around_step(view)

    def close(self) -> None:
        self.file.close()


def read_trace(run_dir: Path) -> list[dict]:
    """Every rank's trace entries."""
    return [json.loads(line) for path in sorted((Path(run_dir) / TRACE_DIR).glob("rank*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]


# The Ray workers cannot import the tests package: send this module's classes by value.
ray.cloudpickle.register_pickle_by_value(__import__(__name__, fromlist=["_"]))
