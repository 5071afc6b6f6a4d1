"""More schedules computing what one process computes, without Ray: two gloo processes run the real
`PipelineRunner` (stages, torch's schedule, gradient handling, optimiser) for several schedules in a row,
and each must give the single-process trainer's step (`pgnet.train._step`, gradients accumulated over the
same micro-batches) its losses and parameters to 1e-4 over 3 steps. The Ray Train path of the same
runner is checked in test_equivalence.py (gpipe, interleaved_1f1b, interleaved_zb, zbv); this file covers
the other schedules for a few seconds instead of ~20 s of Ray Train each.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pgnet.codec.targets import encode_targets
from pgnet.config import load_config
from pgnet.losses import PGNetLoss
from pgnet.optim import build_optimizer, build_scheduler
from pgnet.run.build import seeded_model
from pgnet.train import _step as single_process_step
from pipelines.training.runner import PipelineRunner, TargetPacker
from pipelines.training.schedules import loss_worker, virtual_stages
from pipelines.training.topology import Topology, make_groups
from tests.pipelines.training.test_equivalence import assert_same_parameters
from tests.pipelines.training.test_schedule_config import ZB_CSV
from tests.support.configs import PIPELINE_TINY

STEPS, WORKERS, DEADLINE_S = 3, 2, 300


def config(*overrides: str):
    return load_config(None, [*PIPELINE_TINY, "train.threads=1", *overrides])


def batches(cfg) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Fixed batches: noise images, one person per image with every key point labelled (all heads learn)."""
    rng = np.random.default_rng(0)
    h, w = cfg.data.input_size
    out = []
    for _ in range(STEPS):
        images = torch.from_numpy(rng.standard_normal((cfg.train.batch_size, 3, h, w)).astype(np.float32))
        targets = []
        for _ in range(cfg.train.batch_size):
            x0, y0 = rng.uniform(2, w / 2, 2)
            bw, bh = rng.uniform(10, w / 2, 2)
            points = rng.uniform([x0, y0], [x0 + bw, y0 + bh], (17, 2))
            keypoints = np.concatenate([points, np.ones((17, 1))], axis=1)[None]
            targets.append(encode_targets(np.array([[x0, y0, x0 + bw, y0 + bh]]), keypoints, np.zeros((0, 4)),
                                          (h, w), cfg.data.max_people))
        out.append((images, {k: torch.from_numpy(np.stack([t[k] for t in targets])) for k in targets[0]}))
    return out


def even_balance(units: int, pieces: int) -> list[int]:
    return [units // pieces + (i < units % pieces) for i in range(pieces)]


def run_worker(rank: int, store: str, cases: list[tuple[str, ...]], out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORKERS)
    torch.set_num_threads(1)
    for i, overrides in enumerate(cases):
        cfg = config(f"pipeline.stages={WORKERS}", *overrides)
        p = cfg.pipeline
        topo = Topology(WORKERS, 1, rank, loss_stage=loss_worker(p.schedule, WORKERS, p.virtual_stages))
        model = seeded_model(cfg)
        pieces = WORKERS * virtual_stages(p.schedule, p.virtual_stages)
        runner = PipelineRunner(cfg, topo, make_groups(topo), model, even_balance(len(model.units()), pieces), STEPS,
                                torch.device("cpu"))
        runner.train()
        packer, losses = TargetPacker(cfg), []
        for images, targets in batches(cfg):
            loss, _, _ = runner.step(images if topo.first else None, packer.pack(targets) if topo.holds_loss else None)
            losses.append(loss)
        torch.save({"losses": losses, "model": runner.shard()["model"]}, Path(out) / f"case{i}_rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def reference() -> tuple[list[float], dict[str, torch.Tensor]]:
    """The single-process trainer's step on the same batches, accumulating over the 4 micro-batches."""
    cfg = config("train.accumulate=4")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = seeded_model(cfg)
        criterion = PGNetLoss(cfg.loss, guidance=cfg.model.guidance)
        optimizer = build_optimizer(cfg.optim, model.named_parameters())
        scheduler = build_scheduler(cfg.optim, optimizer, STEPS)
        losses = [single_process_step(cfg, model, criterion, optimizer, scheduler, images, targets, step)[0]
                  for step, (images, targets) in enumerate(batches(cfg), start=1)]
    finally:
        torch.set_num_threads(threads)
    return losses, model.state_dict()


def test_more_schedules_match_the_single_process_trainer(tmp_path, reference):
    (tmp_path / "zb.csv").write_text(ZB_CSV)
    cases = [("pipeline.schedule=dualpipev",), ("pipeline.schedule=looped_bfs",),
             (f"pipeline.schedule=csv:{tmp_path / 'zb.csv'}",), ("pipeline.schedule=interleaved_1f1b",)]
    # fork: the workers share this process's imports (spawn re-imported torch's pipelining, 5-15 s here)
    context = mp.start_processes(run_worker, args=(str(tmp_path / "store"), cases, str(tmp_path)), nprocs=WORKERS,
                                 join=False, start_method="fork")
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=0.2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the gloo pipeline workers did not finish in {DEADLINE_S} s")
    want_losses, want_model = reference
    for i, overrides in enumerate(cases):
        parts = [torch.load(tmp_path / f"case{i}_rank{r}.pt") for r in range(WORKERS)]
        assert parts[0]["losses"] == parts[1]["losses"]  # every rank learns the loss
        assert parts[0]["losses"] == pytest.approx(want_losses, rel=1e-4), overrides
        model = {}
        for part in parts:
            model.update(part["model"])  # shards under the full model's names, whatever the placement
        assert_same_parameters(model, want_model)
