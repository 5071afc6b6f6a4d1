"""`pipeline.trace: true`: a Chrome trace (trace-event JSON, for chrome://tracing or ui.perfetto.dev) of one
training step on every worker, so that the pipeline's bubbles can be seen.

The traced step is the third one the workers run (the first builds the stages and warms up), or the
run's last when it is shorter. Each worker is a process row (pid = world rank), with a thread row per
model piece it holds (forward, backward, backward_input, backward_weight spans) and one for its
point-to-point traffic: `send` and `recv` spans for posting the operations and for waiting on them
(a forward that waits for its input shows as a `recv` wait before the `forward` span). Rank 0 gathers
the spans and writes `pipeline_trace.json` in the run directory (`RunDir.pipeline_trace`). Times are the workers' wall clocks
(`time.time_ns`): exact across the workers of one machine, as good as the clocks' sync across machines.

It wraps the stages' compute methods and torch's p2p helpers (`_batch_p2p`, `_wait_batch_p2p` of
`torch.distributed.pipelining.schedules`, which every schedule calls) during that one step only.
"""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.distributed.pipelining import schedules as torch_schedules

from pgnet.run.layout import RunDir
from pipelines.training.probes import Probe, StepView
from pipelines.training.topology import Topology

P2P_THREAD = 1000  # the thread row of a worker's sends and receives
FIRST_STEPS_SKIPPED = 2  # stage set-up (shape inference) and warm-up


def _now_us() -> float:
    return time.time_ns() / 1000.0


class StepTrace(Probe):
    """Records the spans of one step on this worker and writes them all (rank 0) at the step's end."""

    def __init__(self, runner, first_step: int, run_dir: Path, schedule: str):
        self.stages = runner.pipeline_stages  # this worker's torch PipelineStages
        self.step = min(first_step + FIRST_STEPS_SKIPPED + 1, runner.total_steps)
        self.path = RunDir(run_dir).pipeline_trace
        self.schedule = schedule
        self.events: list[dict[str, Any]] = []
        self.labels: dict[int, str] = {}  # id(P2POp or Work) -> "recv F s1 mb0"
        self.topo: Topology | None = None

    def start(self, run_dir, topo: Topology) -> None:
        self.topo = topo

    def around_step(self, view: StepView):
        if view.step != self.step:
            return contextlib.nullcontext()
        return self._recording()

    @contextlib.contextmanager
    def _recording(self) -> Iterator[None]:
        with contextlib.ExitStack() as undo:
            for stage in self.stages:
                self._wrap_stage(stage, undo)
            self._wrap_p2p(undo)
            yield
        self._write()

    # --- what is recorded -------------------------------------------------------------------

    def _span(self, name: str, kind: str, tid: int, start: float, args: dict[str, Any]) -> None:
        self.events.append({"name": name, "cat": kind, "ph": "X", "ts": start, "dur": _now_us() - start,
                            "pid": self.topo.rank, "tid": tid, "args": args})

    def _wrap_stage(self, stage, undo: contextlib.ExitStack) -> None:
        piece = stage.stage_index

        def timed(method: str, kind_of):
            original = getattr(stage, method)

            def run(chunk: int, *args, **kwargs):
                kind = kind_of(args, kwargs)
                start = _now_us()
                try:
                    return original(chunk, *args, **kwargs)
                finally:
                    self._span(f"{kind} s{piece} mb{chunk}", kind, piece, start, {"stage": piece, "microbatch": chunk})
            setattr(stage, method, run)
            undo.callback(delattr, stage, method)  # the instance attribute hid the class's method

        timed("forward_one_chunk", lambda a, k: "forward")
        timed("backward_one_chunk",
              lambda a, k: "backward" if k.get("full_backward", a[1] if len(a) > 1 else True) else "backward_input")
        timed("backward_weight_one_chunk", lambda a, k: "backward_weight")
        for method, label in (("get_fwd_recv_ops", "recv F"), ("get_bwd_recv_ops", "recv B"),
                              ("get_fwd_send_ops", "send F"), ("get_bwd_send_ops", "send B")):
            self._wrap_ops(stage, method, f"{label} s{piece}", undo)

    def _wrap_ops(self, stage, method: str, label: str, undo: contextlib.ExitStack) -> None:
        original = getattr(stage, method)

        def ops(chunk: int, *args, **kwargs):
            result = original(chunk, *args, **kwargs)
            for op in result:
                self.labels[id(op)] = f"{label} mb{chunk}"
            return result
        setattr(stage, method, ops)
        undo.callback(delattr, stage, method)

    def _wrap_p2p(self, undo: contextlib.ExitStack) -> None:
        post, wait = torch_schedules._batch_p2p, torch_schedules._wait_batch_p2p

        def traced_post(p2p_ops, desc=None):
            names = list(dict.fromkeys(self.labels.get(id(op), "p2p") for op in p2p_ops))  # one per micro-batch
            start = _now_us()
            works = post(p2p_ops, desc)
            label = " + ".join(names)
            for work in works:
                self.labels[id(work)] = label
            if names:
                self._span(f"post {label}", _p2p_kind(names), P2P_THREAD, start, {"ops": names})
            return works

        def traced_wait(works):
            names = list(dict.fromkeys(self.labels.get(id(w), "p2p") for w in works))
            start = _now_us()
            wait(works)
            if names:
                self._span(f"wait {' + '.join(names)}", _p2p_kind(names), P2P_THREAD, start, {"ops": names})

        torch_schedules._batch_p2p, torch_schedules._wait_batch_p2p = traced_post, traced_wait
        undo.callback(setattr, torch_schedules, "_wait_batch_p2p", wait)
        undo.callback(setattr, torch_schedules, "_batch_p2p", post)

    # --- the file ---------------------------------------------------------------------------

    def _write(self) -> None:
        topo = self.topo
        mine = {"rank": topo.rank, "stage": topo.stage, "replica": topo.replica,
                "pieces": [s.stage_index for s in self.stages], "events": self.events}
        gathered = [None] * dist.get_world_size() if topo.rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        self.events, self.labels = [], {}
        if topo.rank == 0:
            partial = self.path.with_suffix(".json.partial")
            partial.write_text(json.dumps(chrome_trace(gathered, self.step, self.schedule)))
            partial.replace(self.path)


def _p2p_kind(names: list[str]) -> str:
    return "recv" if any(n.startswith("recv") for n in names) else "send"


def chrome_trace(workers: list[dict[str, Any]], step: int, schedule: str) -> dict[str, Any]:
    """The workers' spans as one trace-event document: a process row per worker, times from the first span."""
    origin = min((e["ts"] for w in workers for e in w["events"]), default=0.0)
    events: list[dict[str, Any]] = []
    for w in workers:
        pid = w["rank"]
        events.append({"ph": "M", "name": "process_name", "pid": pid,
                       "args": {"name": f"worker {w['stage']} (replica {w['replica']}), pieces {w['pieces']}"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}})
        for piece in w["pieces"]:
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": piece,
                           "args": {"name": f"stage {piece}"}})
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": P2P_THREAD,
                       "args": {"name": "send / recv"}})
        events.extend({**e, "ts": round(e["ts"] - origin, 3), "dur": round(e["dur"], 3)} for e in w["events"])
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"step": step, "schedule": schedule, "clock": "wall, microseconds from the first span"}}
