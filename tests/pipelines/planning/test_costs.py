"""Cost tables: measured on the tiny network (checked against whole-model references), JSON in and out."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pgnet.config import load_config
from pgnet.errors import ConfigError, MissingFileError
from pgnet.run.build import seeded_model
from pipelines.planning.costs import (
    CostTable,
    load_cost_table,
    save_cost_table,
    table_to_json,
)
from pipelines.planning.measure import measure_cost_table
from tests.pipelines.planning.conftest import table
from tests.support.configs import TINY_OVERRIDES


@pytest.fixture(scope="module")
def tiny():
    # plain convolutions (no small_map_matmul, an eager-CPU trick): their input gradient is one forward's FLOPs
    cfg = load_config(None, [*TINY_OVERRIDES, "train.threads=1", "model.small_map_matmul=false"])
    return cfg, measure_cost_table(cfg, microbatch=2, repeats=1, progress=False)


def test_measured_table_matches_the_whole_network(tiny):
    cfg, costs = tiny
    model = seeded_model(cfg)
    units = model.units()
    assert [u.name for u in costs.units] == [u.name for u in units]
    assert costs.microbatch == 2 and costs.input_size == (64, 64)
    assert sum(u.param_bytes for u in costs.units) == sum(p.numel() * 4 for p in model.parameters())
    x = torch.randn(2, 3, 64, 64)
    with FlopCounterMode(display=False) as flops:
        outputs = model(x)
    assert sum(u.forward_flops for u in costs.units) == flops.get_total_flops()
    assert costs.units[-1].send_bytes == sum(t.numel() * 4 for t in outputs.values())
    assert all(u.forward_s > 0 and u.backward_weight_s >= 0 and u.saved_bytes > 0 for u in costs.units)
    assert all(0 <= u.forward_fixed_s <= u.forward_s and 0 <= u.backward_weight_fixed_s <= u.backward_weight_s
               for u in costs.units)
    assert costs.units[0].backward_input_s == 0  # the images need no gradient
    assert all(u.backward_input_s > 0 for u in costs.units[1:])
    # a convolution's backward is two convolutions' worth: input and weight gradients
    assert sum(u.backward_flops for u in costs.units) == pytest.approx(2 * flops.get_total_flops(), rel=0.05)
    # ... of which the input gradients take one (none for the images)
    assert costs.units[0].backward_input_flops == 0
    assert sum(u.backward_input_flops for u in costs.units) == pytest.approx(
        sum(u.forward_flops for u in costs.units[1:]), rel=0.05)


def test_json_round_trip(tiny, tmp_path):
    _, costs = tiny
    path = tmp_path / "costs.json"
    save_cost_table(costs, path, {"config": "tiny"})
    assert load_cost_table(path) == costs
    # a benchmark record carrying the same list is a cost table too
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"results": [], "settings": {}, "unit_costs": table_to_json(costs)}))
    assert load_cost_table(bench) == costs


def test_fixed_parts_stay_fixed_when_scaling():
    costs = CostTable(tuple(dataclasses.replace(u, forward_fixed_s=1.0) for u in table([3.0]).units))
    unit = costs.at(2, (64, 64)).units[0]  # 8 x the work: 1 + 2 x 8, while the backward (no fixed part) is 3 x 8
    assert (unit.forward_s, unit.backward_input_s, unit.forward_fixed_s) == (17.0, 24.0, 1.0)


def test_scaling_is_linear_in_images_and_pixels():
    costs = table([1.0, 2.0], send_bytes=100, saved_bytes=10, param_bytes=7, microbatch=2, size=(32, 32))
    scaled = costs.at(4, (64, 64), time=0.5)
    assert scaled.microbatch == 4 and scaled.input_size == (64, 64)
    u = scaled.units[1]
    assert (u.forward_s, u.send_bytes, u.saved_bytes, u.param_bytes) == (2.0 * 2 * 4 * 0.5, 800, 80, 7)


ROW = ('{"unit_costs": [{"name": "a", "microbatch": 1, "input_size": [32, 32], "forward_s": 1, "backward_input_s": 1, '
       '"backward_weight_s": 1, "send_bytes": 0, "param_bytes": 0, "saved_bytes": 0}]}')


@pytest.mark.parametrize("content, message", [
    ("not json", "is not JSON"),
    ('{"results": []}', 'no top-level "unit_costs"'),
    ('{"unit_costs": []}', "non-empty list"),
    ('{"unit_costs": [{"name": "a"}]}', "missing key"),
    (ROW.replace("}", ', "colour": 1}'), "unknown key 'colour'"),
    (ROW.replace('"forward_s": 1', '"forward_s": -1'), "forward_s must be a finite"),
])
def test_a_bad_cost_file_is_a_config_error(tmp_path, content, message):
    path = tmp_path / "costs.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_cost_table(path)


def test_mixed_micro_batches_are_refused():
    rows = table_to_json(table([1.0, 1.0]))
    rows[1]["microbatch"] = 3
    from pipelines.planning.costs import table_from_json
    with pytest.raises(ConfigError, match="share one micro-batch"):
        table_from_json(rows, "x.json")


def test_a_missing_cost_file(tmp_path):
    with pytest.raises(MissingFileError, match="--save-costs"):
        load_cost_table(tmp_path / "none.json")
