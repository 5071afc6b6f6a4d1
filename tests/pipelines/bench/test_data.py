"""`pgnet bench data` at a tiny size: both paths read the epoch's plan, and the printed figures add up.

No timing target is asserted here (timings belong in the benchmark's own run), only that
the numbers are measured, finite, positive and consistent with each other.
"""
from __future__ import annotations

import math
import re

import pytest

from pgnet.data.order import epoch_batches
from pipelines.bench.data import (
    BATCH,
    bench_config,
    dataloader_epoch,
    ray_data_epoch,
    run_data_benchmark,
    training_set,
)
from tests.support.ray_session import ensure_local_ray

pytestmark = pytest.mark.ray

NUMBER = r"(-?\d+(?:\.\d+)?)"


@pytest.fixture(scope="module")
def printed(tmp_path_factory) -> tuple[list[str], dict]:
    ensure_local_ray()  # the session's Ray: the benchmark limits Ray Data to its 2 CPUs there
    lines: list[str] = []
    result = run_data_benchmark(images=32, workers=2, trivial_trials=1, print_fn=lines.append,
                                synthetic_dir=tmp_path_factory.mktemp("synthetic"), timed_epochs=1)
    return lines, result


def find(lines: list[str], pattern: str) -> tuple[float, ...]:
    hits = [m for line in lines if (m := re.search(pattern, line))]
    assert len(hits) == 1, f"expected one line matching {pattern!r} in:\n" + "\n".join(lines)
    return tuple(float(g) for g in hits[0].groups())


def test_data_lines_give_both_throughputs_and_their_ratio(printed):
    lines, result = printed
    (ray_ips,) = find(lines, rf"^Ray Data +{NUMBER} images/s")
    (loader_ips,) = find(lines, rf"^DataLoader +{NUMBER} images/s")
    (ratio,) = find(lines, rf"^Ray Data / DataLoader: {NUMBER}")
    for value in (ray_ips, loader_ips, ratio):
        assert math.isfinite(value) and value > 0
    assert ratio == pytest.approx(ray_ips / loader_ips, abs=0.01 + 0.01 * ratio)  # rounding of the printed values
    assert result["images_per_epoch"] == 32 // BATCH * BATCH
    assert result["ray_images_per_s"] == pytest.approx(ray_ips, abs=0.06)


def test_tune_lines_give_the_ratio_and_the_overhead_per_trial(printed):
    lines, result = printed
    trials, work, swept, plain = find(lines, rf"^Tune: {NUMBER} trivial trials \({NUMBER} s of work each.*in "
                                             rf"{NUMBER} s vs {NUMBER} s of plain calls")
    ratio, overhead = find(lines, rf"^Tune / plain: {NUMBER}, overhead {NUMBER} s per trial")
    assert trials == 1 and work > 0
    assert plain >= trials * work - 0.01  # the plain calls did the work
    for value in (swept, plain, ratio):
        assert math.isfinite(value) and value > 0
    assert math.isfinite(overhead)
    assert ratio == pytest.approx(swept / plain, abs=0.02)
    assert overhead == pytest.approx((swept - plain) / trials, abs=0.02)
    assert result["tune_ratio"] == pytest.approx(ratio, abs=0.006)


def test_both_paths_read_the_epochs_images_in_the_trainers_order(tmp_path):
    cfg = bench_config(32, 2, tmp_path / "synthetic")
    dataset = training_set(cfg)
    ensure_local_ray()
    for epoch in (1, 2):
        expected = [dataset.records[i].image_id
                    for batch in epoch_batches(len(dataset), BATCH, cfg.train.seed, epoch) for i in batch]
        assert ray_data_epoch(dataset, cfg, epoch).image_ids == expected
        assert dataloader_epoch(dataset, cfg, epoch).image_ids == expected


@pytest.mark.parametrize("images, workers, message", [
    (8, 2, "less than one batch of 16"),
    (32, 0, "at least one worker"),
])
def test_sizes_that_cannot_be_measured_are_refused(images, workers, message):
    with pytest.raises(ValueError, match=message):
        run_data_benchmark(images=images, workers=workers, trivial_trials=1, print_fn=print)
