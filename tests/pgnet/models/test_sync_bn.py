"""Tests of SyncBN (pgnet.models.sync_bn): BN without a process group, and two gloo processes that
together equal full-batch BN (outputs, gradients, running statistics, groups of one rank)."""
from __future__ import annotations

import datetime
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from pgnet.models.norms import set_sync_bn_group
from pgnet.models.sync_bn import SyncBatchNorm2d

ATOL = 1e-6  # where a norm must equal BatchNorm


def test_syncbn_without_process_group_equals_batchnorm():
    assert not dist.is_initialized()
    torch.manual_seed(11)
    sync, bn = SyncBatchNorm2d(5), nn.BatchNorm2d(5)
    with torch.no_grad():
        sync.weight.uniform_(0.5, 1.5)
        sync.bias.uniform_(-1, 1)
    bn.load_state_dict(sync.state_dict())
    for _ in range(3):
        x = torch.randn(4, 5, 6, 6) * 3 + 1
        xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
        outs = [sync(xs[0]), bn(xs[1])]
        proj = torch.randn_like(x)
        for out in outs:
            (out * proj).sum().backward()
        assert_close(outs[0], outs[1], atol=ATOL, rtol=0)
        assert_close(xs[0].grad, xs[1].grad, atol=ATOL, rtol=0)
        assert_close(sync.weight.grad, bn.weight.grad, atol=ATOL, rtol=0)
        assert_close(sync.running_var, bn.running_var, atol=ATOL, rtol=0)
    sync.eval(), bn.eval()
    x = torch.randn(2, 5, 6, 6)
    assert_close(sync(x), bn(x), atol=ATOL, rtol=0)


SPLITS = {"equal": (4, 4), "unequal": (3, 5)}  # per-rank batch sizes; 8 samples in all
CHANNELS = 3


def syncbn_case(split: str) -> dict[str, torch.Tensor]:
    """The full batch, the loss projection and the affine parameters of one case, the same in every process."""
    gen = torch.Generator().manual_seed(sum(SPLITS[split]) * 100 + SPLITS[split][0])
    return {"x": torch.randn(8, CHANNELS, 5, 5, generator=gen) * 2 + 0.5,
            "proj": torch.randn(8, CHANNELS, 5, 5, generator=gen),
            "weight": torch.rand(CHANNELS, generator=gen) + 0.5,
            "bias": torch.randn(CHANNELS, generator=gen)}


def make_syncbn(case: dict[str, torch.Tensor]) -> SyncBatchNorm2d:
    bn = SyncBatchNorm2d(CHANNELS)
    with torch.no_grad():
        bn.weight.copy_(case["weight"])
        bn.bias.copy_(case["bias"])
    return bn


def syncbn_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One replica: train-mode forward/backward on its share of each case, results to rank<k>.pt."""
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
        singles = [dist.new_group([r]) for r in range(world)]  # every rank joins every new_group call
        results = {}
        for split, sizes in SPLITS.items():
            case = syncbn_case(split)
            start = sum(sizes[:rank])
            rows = slice(start, start + sizes[rank])
            bn = make_syncbn(case)
            x = case["x"][rows].clone().requires_grad_()
            out = bn(x)
            # Loss = sum over this rank's samples of a fixed projection; summed over ranks it is the
            # full-batch loss, so input grads must match full-batch BN and summed weight grads too.
            (out * case["proj"][rows]).sum().backward()
            bn.eval()
            eval_out = bn(case["x"][rows])  # a process group exists, CPU tensors: must not raise
            alone = make_syncbn(case)
            assert set_sync_bn_group(nn.Sequential(alone), singles[rank]) == 1
            local_out = alone(case["x"][rows])
            results[split] = {"out": out.detach(), "x_grad": x.grad, "weight_grad": bn.weight.grad,
                              "bias_grad": bn.bias.grad, "running_mean": bn.running_mean,
                              "running_var": bn.running_var, "eval_out": eval_out.detach(),
                              "local_out": local_out.detach()}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    except Exception:
        (Path(out_dir) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def syncbn_results(tmp_path_factory) -> list[dict]:
    """Run the two gloo replicas once for all cases."""
    out_dir = tmp_path_factory.mktemp("syncbn")
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=syncbn_worker, args=(rank, 2, port, str(out_dir))) for rank in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    hung = [proc for proc in procs if proc.is_alive()]
    for proc in hung:
        proc.terminate()
        proc.join()
    errors = "\n".join(p.read_text() for p in sorted(out_dir.glob("*.err")))
    assert not hung and all(p.exitcode == 0 for p in procs), f"SyncBN workers failed:\n{errors}"
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(2)]


@pytest.mark.parametrize("split", SPLITS)
def test_syncbn_two_processes_equal_full_batch_batchnorm(split, syncbn_results):
    case = syncbn_case(split)
    bn = nn.BatchNorm2d(CHANNELS)
    with torch.no_grad():
        bn.weight.copy_(case["weight"])
        bn.bias.copy_(case["bias"])
    x = case["x"].clone().requires_grad_()
    out = bn(x)
    (out * case["proj"]).sum().backward()
    ranks = [r[split] for r in syncbn_results]
    assert [len(r["out"]) for r in ranks] == list(SPLITS[split])
    tol = {"atol": 1e-5, "rtol": 1e-5}
    assert_close(torch.cat([r["out"] for r in ranks]), out.detach(), **tol)
    assert_close(torch.cat([r["x_grad"] for r in ranks]), x.grad, **tol)
    assert_close(sum(r["weight_grad"] for r in ranks), bn.weight.grad, **tol)
    assert_close(sum(r["bias_grad"] for r in ranks), bn.bias.grad, **tol)
    for r in ranks:
        assert_close(r["running_mean"], bn.running_mean, **tol)
        assert_close(r["running_var"], bn.running_var, **tol)
    bn.eval()
    with torch.no_grad():
        assert_close(torch.cat([r["eval_out"] for r in ranks]), bn(case["x"]), **tol)
    # A group of one rank (set_sync_bn_group) normalises with local statistics only.
    start = 0
    for r, size in zip(ranks, SPLITS[split]):
        local = F.batch_norm(case["x"][start:start + size], None, None, case["weight"], case["bias"], training=True)
        assert_close(r["local_out"], local, **tol)
        start += size
