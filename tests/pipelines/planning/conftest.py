"""Synthetic cost tables and clusters whose step times can be worked out by hand."""
from __future__ import annotations

import pytest

from pipelines.planning.cluster import ClusterSpec, DeviceSpec, LinkSpec
from pipelines.planning.costs import CostTable, UnitCost

GIB = 2**30


def table(forward: list[float], *, send_bytes: int = 0, param_bytes: int = 0, saved_bytes: int = 0,
          microbatch: int = 1, size: tuple[int, int] = (32, 32)) -> CostTable:
    """Units with the given forward seconds; input-gradient and weight-gradient seconds equal to them."""
    return CostTable(tuple(UnitCost(f"u{i}", microbatch, size, f, f, f, send_bytes, param_bytes, saved_bytes)
                           for i, f in enumerate(forward)))


def cluster(devices: int = 8, *, memory_gib: float = 1000.0, bandwidth_gb_s: float = 1e9, latency_us: float = 0.0,
            per_node: int | None = None, inter: LinkSpec | None = None) -> ClusterSpec:
    per_node = per_node or devices
    return ClusterSpec(devices // per_node, per_node, DeviceSpec(memory_gib=memory_gib, speed=1.0),
                       LinkSpec(bandwidth_gb_s, latency_us), inter, name="test")


@pytest.fixture
def equal_units() -> CostTable:
    """4 equal units: forward 1 s, backward 2 s (1 + 1) per one-image micro-batch."""
    return table([1.0] * 4, saved_bytes=1000)
