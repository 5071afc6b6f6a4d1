"""Where each Ray Train worker sits in the S x D grid, and its process groups.

World rank = replica * S + stage. A replica's S ranks form its pipeline group
(activations and gradients flow there); a stage's D ranks form its
data-parallel group (gradients are averaged there, SyncBN reduces there).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class Topology:
    stages: int
    replicas: int
    rank: int
    loss_stage: int = -1  # the pipeline worker that holds the model's last piece (-1: the last worker; V: 0)

    @property
    def stage(self) -> int:
        return self.rank % self.stages

    @property
    def replica(self) -> int:
        return self.rank // self.stages

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.stages - 1

    @property
    def holds_loss(self) -> bool:
        """This worker computes the loss (it needs the batch's targets)."""
        return self.stage == self.loss_stage % self.stages

    def rank_of(self, replica: int, stage: int) -> int:
        return replica * self.stages + stage

    @property
    def loss_rank(self) -> int:
        """World rank of the worker of this replica that holds the loss."""
        return self.rank_of(self.replica, self.loss_stage % self.stages)


@dataclass
class Groups:
    pipeline: dist.ProcessGroup | None
    data_parallel: dist.ProcessGroup | None


def make_groups(topo: Topology) -> Groups:
    """Every rank creates every group in the same order (a torch.distributed rule)."""
    pipeline = data_parallel = None
    for replica in range(topo.replicas):
        group = dist.new_group([topo.rank_of(replica, s) for s in range(topo.stages)])
        if replica == topo.replica:
            pipeline = group
    for stage in range(topo.stages):
        group = dist.new_group([topo.rank_of(r, stage) for r in range(topo.replicas)])
        if stage == topo.stage:
            data_parallel = group
    return Groups(pipeline, data_parallel)
