"""Communication times: a point-to-point message and an all-reduce, on one `LinkSpec`.

All-reduce over D ranks, the faster of NCCL's two algorithms (it picks per message size):
- ring (reduce-scatter then all-gather): each rank sends 2 (D - 1) / D of the bytes in 2 (D - 1) steps,
  each paying the link's latency: bandwidth-optimal, what large gradient all-reduces take;
- tree (up and down a binary tree): 2 ceil(log2 D) latencies and twice the bytes at the link's
  bandwidth: what the small all-reduces of synchronised norm layers take.
Collectives run at the slowest link they cross (`ClusterSpec.link`); no contention between concurrent
groups or with pipeline messages is modelled.
"""
from __future__ import annotations

import math

from pipelines.planning.cluster import LinkSpec


def p2p_seconds(nbytes: float, link: LinkSpec) -> float:
    return link.latency_s + nbytes / link.bytes_per_s


def ring_allreduce_sent_bytes(nbytes: float, ranks: int) -> float:
    """Bytes each rank sends in a ring all-reduce of `nbytes`."""
    return 2 * (ranks - 1) / ranks * nbytes if ranks > 1 else 0.0


def ring_allreduce_seconds(nbytes: float, ranks: int, link: LinkSpec, messages: int = 1) -> float:
    """`messages` ring all-reduces carrying `nbytes` together over `ranks` ranks (0 for one rank)."""
    if ranks <= 1:
        return 0.0
    return ring_allreduce_sent_bytes(nbytes, ranks) / link.bytes_per_s + messages * 2 * (ranks - 1) * link.latency_s


def tree_allreduce_seconds(nbytes: float, ranks: int, link: LinkSpec, messages: int = 1) -> float:
    if ranks <= 1:
        return 0.0
    return 2 * nbytes / link.bytes_per_s + messages * 2 * math.ceil(math.log2(ranks)) * link.latency_s


def allreduce_seconds(nbytes: float, ranks: int, link: LinkSpec, messages: int = 1) -> float:
    """The faster of ring and tree for `messages` all-reduces of `nbytes` in all."""
    return min(ring_allreduce_seconds(nbytes, ranks, link, messages),
               tree_allreduce_seconds(nbytes, ranks, link, messages))
