"""`pgnet bench pipeline`'s arithmetic: speed-ups against the median one-worker run of the same M."""
from __future__ import annotations

import pytest

from pipelines.bench.pipeline import PipelineTiming, speedup_rows


def timing(stages: int, schedule: str, m: int, images_per_s: float) -> PipelineTiming:
    return PipelineTiming(stages, schedule, m, images_per_s, 0.1, [1.0] * stages)


def test_one_disturbed_single_worker_run_does_not_move_the_baseline():
    timings = [timing(1, "gpipe", 8, 6.0),  # disturbed
               timing(1, "1f1b", 8, 11.0), timing(1, "interleaved_1f1b", 8, 12.0),
               timing(2, "1f1b", 8, 16.5)]
    rows, baselines = speedup_rows(timings)
    assert baselines[8] == {"median": 11.0, "low": 6.0, "high": 12.0}
    s2 = rows[-1]
    assert s2["speedup"] == pytest.approx(16.5 / 11.0)
    assert s2["ideal"] == pytest.approx(2 * 8 / 9)  # S * M / (M + S - 1)
    assert s2["of_ideal"] == pytest.approx((16.5 / 11.0) / (16 / 9))
    assert rows[0]["speedup"] == pytest.approx(6.0 / 11.0)


def test_each_micro_batch_count_has_its_own_baseline():
    rows, baselines = speedup_rows([timing(1, "gpipe", 2, 10.0), timing(1, "gpipe", 4, 8.0),
                                    timing(2, "gpipe", 2, 13.0), timing(2, "gpipe", 4, 12.0)])
    assert {m: b["median"] for m, b in baselines.items()} == {2: 10.0, 4: 8.0}
    assert [r["speedup"] for r in rows[2:]] == pytest.approx([1.3, 1.5])


def test_a_run_without_a_single_worker_counterpart_is_refused():
    with pytest.raises(ValueError, match="no S=1 run with 8 micro-batches"):
        speedup_rows([timing(1, "gpipe", 4, 8.0), timing(2, "gpipe", 8, 12.0)])
