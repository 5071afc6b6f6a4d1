"""How fast one worker computes while others compute beside it, on this machine: the planner's
`device.concurrent_speed`.

CPU cores share caches and memory bandwidth (and, on a virtual machine, perhaps a physical core), so a
worker whose neighbours are busy can be slower than the same worker alone, which a cost table timed in one
process does not show. One Ray actor (one thread, one CPU) times training steps of the network alone; then
`workers` such actors time them together, released at one instant, in alternating rounds. The speed is
the median over rounds of the solo median step time over the concurrent actors' median.
"""
from __future__ import annotations

import statistics
import time

import ray
import torch

from pgnet.config import Config
from pgnet.run.build import seeded_model
from pgnet.runtime import set_memory_format
from pipelines.bench.timing import forward_backward

START_DELAY_S = 2.0  # from the driver's call to the common start: every actor is waiting by then


@ray.remote(num_cpus=1)
class _Stepper:
    """One worker process that times training steps of the network on one thread."""

    def __init__(self, cfg: Config, microbatch: int):
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = set_memory_format(seeded_model(cfg), cfg.train.channels_last).train()
        self.step = forward_backward(model, torch.randn(microbatch, 3, *cfg.data.input_size), cfg.train.precision)
        self.step()  # warm-up

    def times(self, steps: int, start_at: float) -> list[float]:
        time.sleep(max(0.0, start_at - time.time()))
        times = []
        for _ in range(steps):
            tick = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - tick)
        return times


def concurrent_speed(cfg: Config, microbatch: int, workers: int = 2, steps: int = 6, rounds: int = 3
                     ) -> dict[str, float]:
    """{"solo_s", "concurrent_s", "speed", ...}: median step seconds of one actor alone and of `workers` at once,
    in `rounds` alternating rounds, and the median of the rounds' ratios."""
    actors = [_Stepper.remote(cfg, microbatch) for _ in range(workers)]
    ray.get([a.__ray_ready__.remote() for a in actors])
    solo, together, ratios = [], [], []
    for _ in range(rounds):
        alone = statistics.median(ray.get(actors[0].times.remote(steps, time.time() + START_DELAY_S)))
        start = time.time() + START_DELAY_S
        both = statistics.median(statistics.median(t) for t in
                                 ray.get([a.times.remote(steps, start) for a in actors]))
        solo.append(alone)
        together.append(both)
        ratios.append(alone / both)
    for actor in actors:
        ray.kill(actor)
    return {"solo_s": statistics.median(solo), "concurrent_s": statistics.median(together),
            "speed": min(1.0, statistics.median(ratios)), "rounds": ratios, "workers": workers}
