"""Cluster files (`cluster/plans/*.yaml`): nodes, devices, each device's speed and memory, and the links.

Checked like training configs (`pgnet.typed_yaml`): an unknown key or a value of the wrong type is a
ConfigError naming the key and the file. A device's speed is given one of two ways:
- `speed`: relative to the device the cost table was measured on (1.0: the same): profiled times / speed;
- `flops` (+ `utilization`): each unit's forward, input-gradient and weight-gradient FLOPs (counted by
  `FlopCounterMode` in the cost table) take FLOPs / (flops x utilization), so the whole step's compute is
  the network's FLOPs / rate; `shares: profile` instead spreads that total as the profiled times do
  (the profile's shares between units and passes; from a CPU, noisy on a busy machine and not a GPU's).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pgnet.errors import ConfigError
from pgnet.typed_yaml import build_dataclass, read_yaml, resolve_bundled
from pipelines.planning.costs import CostTable

PLANS_DIR = Path(__file__).resolve().parents[2] / "cluster" / "plans"
GIB = 2**30


@dataclass(frozen=True)
class LinkSpec:
    bandwidth_gb_s: float  # one direction, per device, 1e9 bytes/s
    latency_us: float  # per message

    @property
    def bytes_per_s(self) -> float:
        return self.bandwidth_gb_s * 1e9

    @property
    def latency_s(self) -> float:
        return self.latency_us * 1e-6


@dataclass(frozen=True)
class DeviceSpec:
    memory_gib: float  # what one device holds
    speed: float | None = None  # relative to the profiled device (2.0: twice as fast)
    flops: float | None = None  # peak FLOP/s, in place of speed
    utilization: float = 1.0  # the fraction of `flops` a training step reaches
    reserved_gib: float = 0.0  # taken before the model's share (CUDA context, workspaces, allocator slack)
    overhead_per_unit_us: float = 0.0  # fixed time per unit per compute action (kernel launches)
    # with `flops`: how the time is shared between units and passes. flops: each unit's forward, input-gradient
    # and weight-gradient FLOPs / (flops x utilization); profile: the whole network's FLOPs / (flops x
    # utilization), shared as the profiled times are
    shares: Literal["flops", "profile"] = "flops"
    # each compute's speed while other devices of its node compute too, relative to computing alone (CPU
    # cores share caches and memory bandwidth); 1.0: independent devices, as GPUs are
    concurrent_speed: float = 1.0


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int
    devices_per_node: int
    device: DeviceSpec
    intra_node: LinkSpec  # between devices of one node
    inter_node: LinkSpec | None = None  # between nodes (required when nodes > 1)
    name: str = ""  # default: the file's name
    # CPU cores that a node's devices (worker processes) share; 0: each device computes on its own (GPUs).
    # More devices computing at once than cores: they share the cores equally (`simulate._run_shared`)
    cores_per_node: int = 0

    @property
    def devices(self) -> int:
        return self.nodes * self.devices_per_node

    @property
    def usable_memory_bytes(self) -> float:
        return (self.device.memory_gib - self.device.reserved_gib) * GIB

    def node_of(self, world_rank: int) -> int:
        """Ranks fill nodes in order (Ray Train's placement of world ranks on a packed placement group)."""
        return world_rank // self.devices_per_node

    def replica_cores(self, stages: int, replicas: int) -> float:
        """The cores one pipeline replica's ranks share, its node's cores split evenly between the replicas
        placed there (a replica spanning nodes: as if on one)."""
        replicas_per_node = max(1.0, min(stages * replicas, self.devices_per_node) / stages)
        return self.cores_per_node / replicas_per_node

    def link(self, ranks: list[int]) -> LinkSpec:
        """The slowest link among `ranks`: the inter-node one as soon as they span two nodes."""
        if len({self.node_of(r) for r in ranks}) > 1:
            return self.inter_node  # type: ignore[return-value]  # checked when nodes > 1
        return self.intra_node

    def device_costs(self, costs: CostTable) -> CostTable:
        """`costs` as this cluster's device runs them (`device.speed`, or `device.flops` and `device.shares`)."""
        d = self.device
        if d.speed is not None:
            return costs.at(costs.microbatch, costs.input_size, 1.0 / d.speed)
        rate = d.flops * d.utilization  # type: ignore[operator]
        profiled, flops = sum(u.seconds for u in costs.units), costs.total_flops()
        if flops <= 0 or (d.shares == "profile" and profiled <= 0):
            raise ConfigError(f"cluster {self.name}: device.flops needs a cost table with FLOPs (and times for "
                              "shares: profile); measure one (pgnet plan without --costs) or give device.speed")
        if d.shares == "profile":
            return costs.at(costs.microbatch, costs.input_size, flops / rate / profiled)
        return CostTable(tuple(dataclasses.replace(
            u, forward_s=u.forward_flops / rate, backward_input_s=_input_flops(u) / rate,
            backward_weight_s=(u.backward_flops - _input_flops(u)) / rate, forward_fixed_s=0.0,
            backward_input_fixed_s=0.0, backward_weight_fixed_s=0.0,
            optimizer_s=0.0,  # an update on an accelerator: ~1 ms a step, not modelled
            split_input_s=0.0, split_weight_s=0.0) for u in costs.units))  # the FLOPs split of the backward


def _input_flops(u) -> float:
    """The input-gradient FLOPs; a table without them splits the backward as its profiled times do."""
    if u.backward_input_flops or not u.backward_s:
        return u.backward_input_flops
    return u.backward_flops * u.backward_input_s / u.backward_s


def resolve_cluster_path(path: str | Path) -> Path:
    """A file path, or the name of a file in `cluster/plans/` (`8xA100`)."""
    return resolve_bundled(path, PLANS_DIR, "cluster")


def load_cluster(path: str | Path) -> ClusterSpec:
    file = resolve_cluster_path(path)
    values = read_yaml(file)
    if not isinstance(values, dict):
        raise ConfigError(f"{file}: a cluster file must be a YAML mapping of nodes, devices_per_node, device, "
                          "intra_node, inter_node")
    cluster = check_cluster(build_dataclass(ClusterSpec, values, str(file)), str(file))
    return cluster if cluster.name else dataclasses.replace(cluster, name=file.stem)


def check_cluster(c: ClusterSpec, source: str) -> ClusterSpec:
    """The value checks that the types alone do not make; a ConfigError naming the key and `source`."""
    def bad(key: str, rule: str, value) -> ConfigError:
        return ConfigError(f"{source}: {key}={value!r} {rule}")
    if c.nodes < 1:
        raise bad("nodes", "must be >= 1", c.nodes)
    if c.devices_per_node < 1:
        raise bad("devices_per_node", "must be >= 1", c.devices_per_node)
    d = c.device
    if (d.speed is None) == (d.flops is None):
        raise ConfigError(f"{source}: give exactly one of device.speed (relative to the profiled device) and "
                          "device.flops (peak FLOP/s)")
    for key, value in (("device.speed", d.speed), ("device.flops", d.flops), ("device.memory_gib", d.memory_gib)):
        if value is not None and value <= 0:
            raise bad(key, "must be > 0", value)
    if not 0 < d.utilization <= 1:
        raise bad("device.utilization", "must be in (0, 1]", d.utilization)
    if not 0 <= d.reserved_gib < d.memory_gib:
        raise bad("device.reserved_gib", "must be >= 0 and below device.memory_gib", d.reserved_gib)
    if not 0 < d.concurrent_speed <= 1:
        raise bad("device.concurrent_speed", "must be in (0, 1]", d.concurrent_speed)
    if c.cores_per_node < 0:
        raise bad("cores_per_node", "must be >= 0 (0: devices do not share cores)", c.cores_per_node)
    if d.overhead_per_unit_us < 0:
        raise bad("device.overhead_per_unit_us", "must be >= 0", d.overhead_per_unit_us)
    if c.nodes > 1 and c.inter_node is None:
        raise ConfigError(f"{source}: nodes={c.nodes} needs inter_node (bandwidth_gb_s, latency_us)")
    for name, link in (("intra_node", c.intra_node), ("inter_node", c.inter_node)):
        if link is None:
            continue
        if link.bandwidth_gb_s <= 0:
            raise bad(f"{name}.bandwidth_gb_s", "must be > 0", link.bandwidth_gb_s)
        if link.latency_us < 0:
            raise bad(f"{name}.latency_us", "must be >= 0", link.latency_us)
    return c
