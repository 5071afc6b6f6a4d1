"""`pgnet plan`: the best plan's overrides load as a training config; --validate against a bench record."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pgnet.config import load_config
from pgnet.registry import PIPELINE_SCHEDULES
from pipelines.cli import main
from pipelines.planning.costs import save_cost_table
from pipelines.planning.plan import Plan
from tests.pipelines.planning.conftest import table

SAMPLE = Path(__file__).with_name("sample_bench.json")


@pytest.fixture
def costs_file(tmp_path) -> Path:
    path = tmp_path / "costs.json"
    save_cost_table(table([1.0, 1.0, 1.0, 5.0], param_bytes=2**30, microbatch=1, size=(128, 128)), path)
    return path


@pytest.fixture
def small_cluster(tmp_path) -> Path:
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({"nodes": 1, "devices_per_node": 2,
                                    "device": {"speed": 1.0, "memory_gib": 14},
                                    "intra_node": {"bandwidth_gb_s": 10, "latency_us": 10}}))
    return path


def test_emit_overrides_loads_as_a_training_config(costs_file, small_cluster, capsys, tmp_path):
    code = main(["plan", "--config", "cpu_small", "--set", "train.batch_size=4", "--cluster", str(small_cluster),
                 "--costs", str(costs_file), "--schedules", "gpipe", "1f1b", "--emit-overrides", "--quiet",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    out = capsys.readouterr()
    overrides = out.out.split()
    assert overrides and all("=" in o for o in overrides)
    cfg = load_config(None, ["train.batch_size=4", *overrides])
    # 14 GiB rule out the whole network on one device (16 GiB with AdamW): two stages, the cut worked out by hand
    assert (cfg.pipeline.stages, cfg.pipeline.data_parallel, cfg.pipeline.balance) == (2, 1, (3, 1))
    assert cfg.pipeline.schedule in ("gpipe", "1f1b") and cfg.pipeline.microbatches == 4
    assert "feasible" in out.err  # the table goes to stderr, so stdout holds the overrides alone
    plans = json.loads((tmp_path / "out" / "plans.json").read_text())["plans"]
    assert plans[0]["balance"] == [3, 1] and plans[0]["feasible"]
    assert any(not p["feasible"] and "GiB" in p["reason"] for p in plans)
    assert (tmp_path / "out" / "plans.csv").read_text().startswith("rank,feasible,stages")


def test_validate_prints_measured_and_predicted_and_flags_the_misses(capsys, tmp_path):
    cluster = tmp_path / "loopback.yaml"
    cluster.write_text(yaml.safe_dump({"nodes": 1, "devices_per_node": 2, "device": {"speed": 1.0, "memory_gib": 4},
                                       "intra_node": {"bandwidth_gb_s": 1.5, "latency_us": 500}}))
    assert main(["plan", "--validate", str(SAMPLE), "--cluster", str(cluster)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "measured s" in lines[0] and "predicted s" in lines[0]
    rows = [line.split() for line in lines[1:-1]]
    # 0.5 ms per message, no bytes. Per 2-image micro-batch a unit takes 0.01 s forward and 0.02 s backward;
    # the sample's batch is 8.
    c = 0.0005
    worked_out = {("1", "gpipe", "4"): 4 * 4 * 0.03,  # one stage: M x 4 units
                  ("2", "gpipe", "4"): 5 * 2 * 0.03 + 2 * c,  # (M + S - 1)(f + b) + one message each way
                  ("2", "1f1b", "2"): 3 * 4 * 0.03 + 2 * c}  # 4-image micro-batches: 2 units x 0.06 s
    for row in rows:
        key = (row[0], row[2], row[4])
        if key in worked_out:
            measured, predicted = float(row[5]), float(row[7])
            assert predicted == pytest.approx(worked_out[key], abs=1e-4)
            error = (predicted - measured) / measured
            assert row[8] == f"{error:+.1%}" and row[9] == ("yes" if abs(error) <= 0.15 else "NO")
    flags = {(r[0], r[2]): r[9] for r in rows}
    assert flags[("2", "1f1b")] == "NO" and flags[("2", "gpipe")] == "yes"
    assert lines[-1].endswith("of 4 configurations predicted within 15% of the measured step time")


def test_validate_refuses_a_record_without_costs(tmp_path, capsys):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"results": [], "settings": {}}))
    assert main(["plan", "--validate", str(path)]) == 2
    assert 'no top-level "unit_costs"' in capsys.readouterr().err


@pytest.mark.parametrize("name", PIPELINE_SCHEDULES.names())
def test_every_schedules_plan_is_a_valid_training_config(name):
    virtual = PIPELINE_SCHEDULES.get(name).virtual_stages(2)
    plan = Plan(2, 2, 4, name, virtual, tuple([1] * (2 * virtual)))
    cfg = load_config(None, ["train.batch_size=16", *plan.overrides()])
    p = cfg.pipeline
    assert (p.stages, p.data_parallel, p.microbatches, p.schedule, p.balance) == (2, 2, 4, name, plan.balance)
