"""Cluster files: the bundled ones load; a wrong one is a ConfigError that names the key and the file."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from pgnet.errors import ConfigError
from pipelines.cli import main
from pipelines.planning.cluster import PLANS_DIR, load_cluster
from pipelines.planning.costs import CostTable
from tests.pipelines.planning.conftest import table

GOOD = {"nodes": 2, "devices_per_node": 4, "device": {"flops": 1.0e14, "utilization": 0.5, "memory_gib": 40},
        "intra_node": {"bandwidth_gb_s": 100, "latency_us": 5}, "inter_node": {"bandwidth_gb_s": 10, "latency_us": 20}}


def write(tmp_path, values) -> str:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_the_bundled_clusters_load():
    names = sorted(p.stem for p in PLANS_DIR.glob("*.yaml"))
    assert {"this-machine", "8xA100", "64xA100"} <= set(names)
    big = load_cluster("64xA100")
    assert big.devices == 64 and big.link([0, 7]) == big.intra_node and big.link([7, 8]) == big.inter_node


def test_a_flop_rate_times_each_pass_by_its_flops(tmp_path):
    spec = load_cluster(write(tmp_path, GOOD))  # 1e14 FLOP/s x 0.5
    costs = CostTable(tuple(dataclasses.replace(u, forward_flops=1e14, backward_flops=3e14, backward_input_flops=1e14)
                            for u in table([0.5, 1.5]).units))
    unit = spec.device_costs(costs).units[1]
    assert (unit.forward_s, unit.backward_input_s, unit.backward_weight_s) == pytest.approx((2.0, 2.0, 4.0))


def test_profile_shares_spread_the_networks_flops_as_the_profile_does(tmp_path):
    spec = load_cluster(write(tmp_path, {**GOOD, "device": {**GOOD["device"], "shares": "profile"}}))
    costs = CostTable(tuple(dataclasses.replace(u, forward_flops=1e14, backward_flops=2e14)
                            for u in table([0.5, 1.5]).units))  # 6 s profiled in all
    # 6e14 FLOPs at 1e14 x 0.5 FLOP/s take 12 s: every profiled time doubles
    assert [u.seconds for u in spec.device_costs(costs).units] == pytest.approx([3.0, 9.0])


@pytest.mark.parametrize("change, message", [
    ({"nodez": 2}, "unknown key 'nodez'"),
    ({"device": {"flops": 1e14, "memory_gib": 40, "sped": 2}}, "unknown key 'device.sped'"),
    ({"devices_per_node": "eight"}, "'devices_per_node' must be int"),
    ({"device": {"memory_gib": 40}}, "exactly one of device.speed"),
    ({"device": {"memory_gib": 40, "speed": 1.0, "flops": 1e14}}, "exactly one of device.speed"),
    ({"device": {"memory_gib": 40, "speed": 1.0, "utilization": 1.5}}, "device.utilization=1.5"),
    ({"intra_node": {"bandwidth_gb_s": 0, "latency_us": 5}}, "intra_node.bandwidth_gb_s=0.0 must be > 0"),
    ({"inter_node": None}, "nodes=2 needs inter_node"),
    ({"nodes": 0}, "nodes=0 must be >= 1"),
    ({"device": {"memory_gib": 40, "flops": 1e14, "shares": "equal"}}, "device.shares='equal' is not one of"),
])
def test_a_wrong_cluster_file_names_the_key(tmp_path, change, message):
    path = write(tmp_path, {**GOOD, **change})
    with pytest.raises(ConfigError, match=message) as err:
        load_cluster(path)
    assert path in str(err.value)


def test_the_cli_prints_one_line_for_a_bad_cluster(tmp_path, capsys):
    path = write(tmp_path, {**GOOD, "nodez": 1})
    assert main(["plan", "--cluster", path, "--costs", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pgnet plan: error:") and "unknown key 'nodez'" in err and len(err.splitlines()) == 1
    assert main(["plan", "--cluster", "no-such-cluster"]) == 2
    assert "cluster file 'no-such-cluster' not found (bundled clusters: 64xA100, 8xA100" in capsys.readouterr().err
