"""`pgnet bench pipeline`: its run order, arithmetic, report and record, and the pre-encoded feed it trains on.

The runs themselves are Ray Train runs of the platform (tested elsewhere); here they are given as numbers.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from pgnet.data.order import epoch_batches
from pgnet.data.sample import make_sample
from pgnet.errors import ConfigError
from pipelines.bench.pipeline import (
    BASELINE,
    BenchSettings,
    Variant,
    parse_variant,
    result_rows,
    run_order,
)
from pipelines.bench.pipeline_report import print_report
from pipelines.bench.record import write_record
from pipelines.cli import main
from pipelines.planning.costs import table_to_json
from pipelines.training.data_feed import FeedStats, encoded_batches
from pipelines.training.topology import Topology
from pipelines.training.worker import _epoch_batches
from tests.pipelines.conftest import train_records
from tests.pipelines.planning.conftest import table
from tests.support.configs import pipeline_config

S2, ZB = Variant(2, "1f1b"), Variant(2, "zbv", 2)


def test_every_round_starts_with_one_worker_and_rotates_the_others():
    variants = (BASELINE, S2, ZB, Variant(3, "1f1b"))
    orders = [run_order(variants, r) for r in range(3)]
    assert [o[0] for o in orders] == [BASELINE] * 3
    assert [o[1:] for o in orders] == [[S2, ZB, Variant(3, "1f1b")], [ZB, Variant(3, "1f1b"), S2],
                                       [Variant(3, "1f1b"), S2, ZB]]


def test_rows_take_medians_spreads_and_the_bubble_bound():
    settings = BenchSettings(batch=32, microbatches=8)
    runs = {BASELINE: [{"step_s": t, "wait_fraction": 0.0} for t in (2.0, 2.2, 1.9)],
            S2: [{"step_s": t, "wait_fraction": 0.01} for t in (1.25, 1.20, 1.30)]}
    rows = result_rows(settings, runs, table([1.0, 1.0, 1.0, 1.0]))
    one, two = rows
    assert one["step_s"] == 2.0 and one["step_s_spread"] == pytest.approx((2.2 - 1.9) / 2.0)
    assert two["step_s"] == 1.25 and two["speedup"] == pytest.approx(2.0 / 1.25)
    assert two["bubble_bound"] == pytest.approx(2 * 8 / 9)  # S x M / (M + S - 1)
    assert two["of_bound"] == pytest.approx((2.0 / 1.25) / (16 / 9))
    assert two["images_per_s"] == pytest.approx(32 / 1.25) and two["balance"] == [2, 2]


@pytest.mark.parametrize("text, variant", [("2:1f1b", Variant(2, "1f1b")), ("2:zbv:2", Variant(2, "zbv", 2)),
                                           ("3:interleaved_zb:2", Variant(3, "interleaved_zb", 2))])
def test_variants_parse(text, variant):
    assert parse_variant(text) == variant


@pytest.mark.parametrize("text, message", [("two:1f1b", "STAGES:SCHEDULE"), ("2", "STAGES:SCHEDULE"),
                                           ("2:fastest", "fastest")])
def test_a_bad_variant_is_refused_with_the_form(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_variant(text)


def synthetic_record(s1_runs: list[float]) -> dict:
    """A bench record over 4 units of 0.01 s forward and 0.02 s backward per 4-image micro-batch, batch 32, M=8:
    one worker computes 8 x 4 x 0.03 = 0.96 s a step."""
    settings = BenchSettings(batch=32, microbatches=8, repeats=len(s1_runs))
    runs = {BASELINE: [{"step_s": t, "wait_fraction": 0.0} for t in s1_runs],
            S2: [{"step_s": 0.6, "wait_fraction": 0.0}] * len(s1_runs),
            ZB: [{"step_s": 0.55, "wait_fraction": 0.0}] * len(s1_runs)}
    costs = table([0.01] * 4, microbatch=4, size=(128, 128))
    return {"settings": {**settings.__dict__, "warmup_steps": 2, "concurrent_speed": 1.0},
            "unit_costs": table_to_json(costs), "results": result_rows(settings, runs, costs),
            "ray_data_feed": {"variant": S2.label, "step_s": 0.9, "wait_fraction": 0.3, "epoch_wait_fraction": 0.5,
                              "preencoded_step_s": 0.6}}


def test_the_report_prints_the_verdicts_and_the_simulators_prediction_of_each_row():
    lines: list[str] = []
    record = synthetic_record([0.96, 1.0, 0.98])
    validation = print_report(record, lines.append)
    text = "\n".join(lines)
    assert "S=2, step time against 1F1B (0.600 s): zbv V=2 0.92x" in text
    assert f"S=1 spread within this run: {0.04 / 0.98:.1%} (target < 10%: met)" in text
    best = 0.98 / 0.55 / (16 / 9)
    assert f"best at S=2: S=2 zbv V=2, {0.98 / 0.55:.2f}x one worker, {best:.2f} of the bubble bound" in text
    assert ("30.0% of a timed step (50.0% of the epoch, Ray Data's start-up included); 0.900 s/step against 0.600 "
            "pre-encoded (1.50x)") in text
    # one worker: the cost table's 0.96 s (no communication, no optimiser time in this table)
    assert [v["label"] for v in validation] == ["S=1 1f1b", "S=2 1f1b", "S=2 zbv V=2"]
    assert validation[0]["predicted_s"] == pytest.approx(0.96)
    assert validation[0]["error"] == pytest.approx((0.96 - 0.98) / 0.98)


def test_a_wide_single_worker_spread_is_reported_as_missed():
    lines: list[str] = []
    print_report(synthetic_record([0.9, 1.0, 1.2]), lines.append)
    assert "S=1 spread within this run: 30.0% (target < 10%: NOT met)" in lines


def test_plan_validate_reads_the_record_the_bench_writes(tmp_path, capsys):
    md, js = write_record(tmp_path, "pipeline", ["table"], synthetic_record([0.96, 1.0, 0.98]), {},
                          command=["pgnet", "bench", "pipeline"])
    assert main(["plan", "--validate", str(js)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines[1:-1]] == ["1f1b", "1f1b", "zbv"]
    assert lines[-1].endswith("of 3 configurations predicted within 15% of the measured step time")
    assert json.loads(js.read_text())["results"]["settings"]["batch"] == 32


@pytest.fixture(scope="module")
def feed_config(tmp_path_factory):
    return pipeline_config(tmp_path_factory.mktemp("synthetic"), "pipeline.stages=2")


def test_preencoded_batches_are_the_epochs_first_batches(feed_config):
    cfg = feed_config
    records = train_records(cfg)
    batches = encoded_batches(records, cfg, 2)
    order = epoch_batches(len(records), cfg.train.batch_size, cfg.train.seed, 0)
    for batch, indices in zip(batches, order):
        samples = [make_sample(records[i], input_size=tuple(cfg.data.input_size), max_people=cfg.data.max_people,
                               augment=cfg.data.augment, seed=cfg.train.seed, epoch=0, train=True) for i in indices]
        assert batch["image_id"].tolist() == [records[i].image_id for i in indices]
        np.testing.assert_array_equal(batch["image"], np.stack([s["image"] for s in samples]))
    with pytest.raises(Exception, match="full batches"):
        encoded_batches(records, cfg, 99)


def test_the_first_stage_cycles_preencoded_batches_for_an_epochs_steps(feed_config):
    cfg = feed_config
    records = train_records(cfg)  # 24 images, batch 8: 3 steps an epoch
    batches = [{"image_id": np.asarray([i])} for i in range(2)]
    stats = FeedStats()
    fed = list(_epoch_batches(records, cfg, 1, Topology(2, 1, 0), 0, stats, batches))
    assert [int(b["image_id"][0]) for b in fed] == [0, 1, 0] and stats.seen == 24
    resumed = list(_epoch_batches(records, cfg, 1, Topology(2, 1, 0), 8, FeedStats(), batches))  # one batch read
    assert len(resumed) == 2
    assert list(_epoch_batches(records, cfg, 1, Topology(2, 1, 1), 0, FeedStats(), batches)) == []


def test_a_configuration_its_schedule_refuses_stops_the_bench_before_any_run(capsys):
    """ZBV places two stages on each worker: V=1 is refused when the bench starts, not after minutes of runs."""
    assert main(["bench", "pipeline", "--variants", "2:zbv:1"]) == 2
    err = capsys.readouterr().err
    assert "pipeline.virtual_stages" in err and "unit costs" not in err


@pytest.mark.parametrize("argv, message", [(["--steps", "2"], "warm-up"), (["--batch", "30"], "divide")])
def test_settings_that_cannot_give_a_timing_are_refused(argv, message, capsys):
    assert main(["bench", "pipeline", *argv]) == 2
    assert message in capsys.readouterr().err
