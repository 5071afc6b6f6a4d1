"""`pgnet bench small-maps`: a training step with `model.small_map_matmul` off and on, interleaved.

Both models are built from the same config and seed, and their steps alternate, so that a machine
whose speed drifts during the run slows both alike; the ratio is the median of the pairs' ratios.
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Callable

import torch

from pgnet.config import load_config
from pgnet.models import build_model
from pgnet.runtime import set_memory_format
from pipelines.bench.timing import forward_backward, time_call


def training_step(cfg, small_map_matmul: bool, images: torch.Tensor) -> Callable[[], None]:
    """Forward + backward of the config's model on `images`, in its precision and memory format."""
    torch.manual_seed(cfg.train.seed)
    model_cfg = dataclasses.replace(cfg.model, small_map_matmul=small_map_matmul, pretrained=None)
    model = set_memory_format(build_model(model_cfg), cfg.train.channels_last).train()
    return forward_backward(model, images, cfg.train.precision)


def run_small_map_benchmark(config: str, batch: int | None, pairs: int, threads: int,
                            print_fn=print) -> dict[str, float]:
    cfg = load_config(config)
    torch.set_num_threads(threads)
    batch = batch or cfg.train.batch_size
    h, w = cfg.data.input_size
    images = torch.randn(batch, 3, h, w)
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    steps = {False: training_step(cfg, False, images), True: training_step(cfg, True, images)}
    for step in steps.values():  # first calls allocate and pick kernels
        step()
        step()
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(pairs):
        for on, step in steps.items():
            times[on].append(time_call(step, repeats=1, warmup=0))
    ratio = statistics.median(off / on for off, on in zip(times[False], times[True]))
    print_fn(f"torch {torch.__version__}, {threads} thread(s); {config}: {cfg.model.backbone} at {h}x{w}, "
             f"batch {batch}, {cfg.train.precision}, channels_last={cfg.train.channels_last}; "
             f"forward + backward, {pairs} interleaved pairs")
    results = {}
    for on in (False, True):
        median = statistics.median(times[on])
        print_fn(f"  model.small_map_matmul={str(on).lower():<5}  {1000 * median:8.1f} ms/step  "
                 f"{batch / median:8.1f} images/s")
        results[f"images_per_s_{'on' if on else 'off'}"] = batch / median
    print_fn(f"small_map_matmul makes a training step {ratio:.2f}x as fast (median of the pairs' ratios)")
    results["speedup"] = ratio
    return results
