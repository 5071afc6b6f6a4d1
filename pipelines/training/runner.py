"""One worker's share of pipeline-parallel training: its stage(s), schedule, optimiser and step.

`PipelineRunner.step` runs one batch through the schedule (micro-batches,
activations forward, gradients back), averages gradients over the stage's
data-parallel replicas, clips by the global norm and updates. Every rank gets
the batch's loss terms back (an all-reduce from the last stages).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.pipelining import PipelineStage

from pgnet.codec.targets import empty_targets, output_size
from pgnet.config import Config
from pgnet.losses import PGNetLoss
from pgnet.models import PGNet, set_sync_bn_group
from pgnet.optim import align_lr, build_optimizer, build_scheduler
from pgnet.registry import PIPELINE_SCHEDULES
from pgnet.run.checkpoint import load_named_optimizer_state, named_optimizer_state
from pgnet.runtime import set_memory_format
from pipelines.training.schedules import build_schedule, schedule_pieces, virtual_stages
from pipelines.training.stages import StageModule, build_stage_modules
from pipelines.training.topology import Groups, Topology


class TargetPacker:
    """A batch of targets as one (B, N) float32 tensor and back.

    The schedule's loss target must be a single tensor, and the first stage ships the
    targets to the last in one message. Integer targets (flat map indices) are exact in
    float32 below 2**24, i.e. for output maps up to 4096 x 4096.
    """

    def __init__(self, cfg: Config):
        h, w = cfg.data.input_size
        sample = empty_targets(*output_size((h, w)), cfg.data.max_people)
        self.layout = [(k, tuple(v.shape), torch.from_numpy(v).dtype) for k, v in sample.items()]
        self.width = sum(math.prod(shape) for _, shape, _ in self.layout)

    def pack(self, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        b = next(iter(targets.values())).shape[0]
        return torch.cat([targets[k].reshape(b, -1).to(torch.float32) for k, _, _ in self.layout], dim=1)

    def unpack(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for key, shape, dtype in self.layout:
            n = math.prod(shape)
            out[key] = packed[:, offset:offset + n].reshape(-1, *shape).to(dtype)
            offset += n
        return out


class PipelineRunner:
    """The stage(s) this rank hosts, and how it trains them."""

    def __init__(self, cfg: Config, topo: Topology, groups: Groups, model: PGNet, balance: list[int],
                 total_steps: int, device: torch.device):
        self.cfg, self.topo, self.groups, self.device = cfg, topo, groups, device
        self.total_steps = total_steps
        p = cfg.pipeline
        self.virtual = virtual_stages(p.schedule, p.virtual_stages)
        self.pieces = schedule_pieces(p.schedule, topo.stage, topo.stages, p.virtual_stages)
        num_pieces = topo.stages * self.virtual
        split = PIPELINE_SCHEDULES.get(p.schedule).split_backward  # zero bubble: see StageModule.forward
        self.modules: list[StageModule] = [set_memory_format(m.to(device), cfg.train.channels_last) for m in
                                           build_stage_modules(model, balance, self.pieces, cfg.train.precision, split)]
        for module in self.modules:
            set_sync_bn_group(module, groups.data_parallel)
        self.holds_loss = (num_pieces - 1) in self.pieces
        self.output_names = model.output_names
        self.criterion = PGNetLoss(cfg.loss, guidance=cfg.model.guidance)
        self.term_names = list(self.criterion.weights)
        self.pipeline_stages = [PipelineStage(m, stage_index=i, num_stages=num_pieces, device=device,
                                              group=groups.pipeline) for m, i in zip(self.modules, self.pieces)]
        self.schedule = build_schedule(p.schedule, self.pipeline_stages, p.microbatches, self._loss)
        self.named_params = [np for m in self.modules for np in m.named_model_parameters()]
        self.optimizer = build_optimizer(cfg.optim, self.named_params)
        self.scheduler = build_scheduler(cfg.optim, self.optimizer, total_steps)
        self._terms: list[dict[str, torch.Tensor]] = []
        self.packer = TargetPacker(cfg)

    def _loss(self, outputs: tuple[torch.Tensor, ...], packed_target: torch.Tensor) -> torch.Tensor:
        loss, terms = self.criterion(dict(zip(self.output_names, outputs)), self.packer.unpack(packed_target))
        self._terms.append(terms)
        return loss

    def train(self) -> None:
        for m in self.modules:
            m.train()

    def step(self, images: torch.Tensor | None, packed_targets: torch.Tensor | None
             ) -> tuple[float, dict[str, float], float]:
        """One optimiser step; returns (loss, terms, lr) of the global batch, on every rank.

        The first stage passes the images, the last stage the packed targets (`TargetPacker`).
        """
        self.optimizer.zero_grad(set_to_none=True)
        self._terms = []
        losses: list[torch.Tensor] = []
        args = (images.to(self.device),) if self.topo.first else ()
        target = packed_targets.to(self.device) if self.holds_loss else None
        self.schedule.step(*args, target=target, losses=losses if self.holds_loss else None,
                           return_outputs=False)
        self._match_gradient_layouts()
        self._average_gradients()
        if self.cfg.optim.grad_clip > 0:
            self._clip_gradients(self.cfg.optim.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        loss, terms = self._batch_metrics(losses)
        return loss, terms, lr

    def _match_gradient_layouts(self) -> None:
        """Give every gradient its parameter's strides. A zero-bubble schedule's weight-gradient pass sets
        `p.grad` to what `autograd.grad` returned (a CPU convolution's weight gradient comes channels-last),
        and the fused optimisers read a gradient in its parameter's layout: the update was wrong."""
        for _, p in self.named_params:
            if p.grad is not None and p.grad.stride() != p.stride():
                p.grad = torch.empty_like(p).copy_(p.grad)

    def _average_gradients(self) -> None:
        if self.topo.replicas == 1:
            return
        grads = [p.grad for _, p in self.named_params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self.groups.data_parallel)
        flat /= self.topo.replicas
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def _clip_gradients(self, max_norm: float) -> None:
        """Clip by the norm over the whole model: the squared norms of all stages are summed."""
        grads = [p.grad for _, p in self.named_params if p.grad is not None]
        squared = torch.stack([g.pow(2).sum() for g in grads]).sum() if grads else torch.zeros((), device=self.device)
        squared = squared.reshape(1).to(torch.float64)
        dist.all_reduce(squared, group=self.groups.pipeline)
        scale = max_norm / (squared.sqrt().item() + 1e-6)
        if scale < 1:
            for g in grads:
                g.mul_(scale)

    def _batch_metrics(self, losses: list[torch.Tensor]) -> tuple[float, dict[str, float]]:
        """Mean over micro-batches on the last stage, then over replicas; an all-reduce gives it to all."""
        values = torch.zeros(1 + len(self.term_names), dtype=torch.float64, device=self.device)
        if self.holds_loss:
            values[0] = torch.stack([l.detach() for l in losses]).mean()
            # The schedule's first call also runs the loss once for shape inference: keep the real ones.
            terms = self._terms[-len(losses):]
            for i, name in enumerate(self.term_names, start=1):
                values[i] = torch.stack([t[name] for t in terms]).mean()
        dist.all_reduce(values)
        values /= self.topo.replicas
        values = values.tolist()
        return values[0], dict(zip(self.term_names, values[1:]))

    # --- checkpoint shards ---------------------------------------------------------------------

    def shard(self) -> dict[str, Any]:
        state: dict[str, torch.Tensor] = {}
        for m in self.modules:
            state.update(m.model_state())
        return {"model": state, "optimizer": named_optimizer_state(self.optimizer, self.named_params),
                "scheduler": self.scheduler.state_dict(), "pieces": self.pieces}

    def load(self, model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any] | None,
             scheduler_state: dict[str, Any] | None, *, step: int) -> None:
        for m in self.modules:
            m.load_model_state(model_state)
        if optimizer_state is not None:
            load_named_optimizer_state(self.optimizer, self.named_params, optimizer_state)
        if scheduler_state is not None:
            self.scheduler.load_state_dict(scheduler_state)
            align_lr(self.cfg.optim, self.optimizer, self.scheduler, step, self.total_steps)
