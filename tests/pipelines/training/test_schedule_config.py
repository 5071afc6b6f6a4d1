"""Pipeline schedules at config time: placements, and every refusal as a ConfigError before any worker starts."""
from __future__ import annotations

import pytest

from pgnet.config import load_config
from pgnet.errors import ConfigError
from pgnet.registry import PIPELINE_SCHEDULES
from pipelines.training.schedules import loss_worker, schedule_pieces, virtual_stages

ZB_CSV = "0F0,0F1,0F2,0F3,0I0,0W0,0I1,0W1,0I2,0W2,0I3,0W3\n1F0,1I0,1F1,1I1,1F2,1I2,1F3,1I3,1W0,1W1,1W2,1W3\n"


def pipeline(*overrides: str):
    return load_config(None, ["train.batch_size=8", *overrides]).pipeline


def test_v_schedules_place_stages_r_and_2s_minus_1_minus_r_and_the_loss_on_worker_0():
    for name in ("zbv", "dualpipev"):
        assert [schedule_pieces(name, w, 3, 2) for w in range(3)] == [[0, 5], [1, 4], [2, 3]]
        assert virtual_stages(name, 2) == 2 and loss_worker(name, 3, 2) == 0
    for name in ("interleaved_zb", "looped_bfs"):
        assert [schedule_pieces(name, w, 2, 3) for w in range(2)] == [[0, 2, 4], [1, 3, 5]]
        assert loss_worker(name, 2, 3) == 1
    assert schedule_pieces("1f1b", 1, 3, 2) == [1] and loss_worker("gpipe", 3, 2) == 2


@pytest.mark.parametrize("overrides", [
    ("pipeline.stages=2", "pipeline.schedule=zbv", "pipeline.microbatches=2"),
    ("pipeline.stages=2", "pipeline.schedule=dualpipev", "pipeline.microbatches=4"),
    ("pipeline.stages=3", "pipeline.schedule=interleaved_zb", "pipeline.microbatches=4"),
    ("pipeline.stages=2", "pipeline.schedule=looped_bfs", "pipeline.microbatches=8", "pipeline.virtual_stages=3"),
])
def test_new_schedules_accept_what_torch_can_run(overrides):
    assert pipeline(*overrides).schedule in PIPELINE_SCHEDULES


@pytest.mark.parametrize("overrides, words", [
    (("pipeline.stages=2", "pipeline.schedule=zbv", "pipeline.virtual_stages=3"),
     r"zbv places exactly 2 stages on each worker .* pipeline.virtual_stages=3"),
    (("pipeline.stages=2", "pipeline.schedule=dualpipev", "pipeline.microbatches=2"),
     r"dualpipev needs pipeline.microbatches >= 2 x pipeline.stages .* 2 < 4"),
    (("pipeline.stages=2", "train.batch_size=10", "pipeline.schedule=interleaved_zb", "pipeline.microbatches=5"),
     r"interleaved_zb needs pipeline.microbatches to be a multiple of its rounds.* = 2, got 5"),
    (("pipeline.stages=2", "train.batch_size=10", "pipeline.schedule=interleaved_1f1b", "pipeline.microbatches=5"),
     r"interleaved_1f1b needs pipeline.microbatches to be a multiple of its rounds"),
    (("pipeline.stages=2", "pipeline.schedule=looped_bfs", "pipeline.virtual_stages=0"),
     r"looped_bfs needs pipeline.virtual_stages >= 1"),
    (("pipeline.stages=2", "pipeline.schedule=nope"), r"'nope' is not one of .*dualpipev, csv:PATH"),
])
def test_schedule_constraints_are_config_errors(overrides, words):
    with pytest.raises(ConfigError, match=words):
        pipeline(*overrides)


def test_a_csv_schedule_places_its_stages_and_runs_torch_s_checks(tmp_path):
    path = tmp_path / "zb.csv"
    path.write_text(ZB_CSV)
    cfg = pipeline("pipeline.stages=2", f"pipeline.schedule=csv:{path}")
    spec = PIPELINE_SCHEDULES.get(cfg.schedule)
    assert spec.split_backward and [spec.pieces(w, 2, 2) for w in range(2)] == [[0], [1]]
    assert virtual_stages(cfg.schedule, 2) == 1 and loss_worker(cfg.schedule, 2, 2) == 1


def test_a_relative_csv_path_is_pinned_for_the_workers(tmp_path, monkeypatch):
    (tmp_path / "zb.csv").write_text(ZB_CSV)
    monkeypatch.chdir(tmp_path)
    cfg = pipeline("pipeline.stages=2", "pipeline.schedule=csv:zb.csv")
    cfg.pin_paths()
    assert cfg.schedule == f"csv:{tmp_path / 'zb.csv'}"


@pytest.mark.parametrize("text, words", [
    (None, r"csv:.*missing.csv: no such file"),
    ("0F0,0X1\n", r"row 1, cell 2 is '0X1', not an action like 0F1"),
    ("0F0,1SEND_F0\n", r"row 1, cell 2 is '1SEND_F0', not an action"),
    (b"\xff\xfe\x00", r"cannot read it as CSV"),
    ("\n\n", r"holds no action"),
    ("0F0,0F1,0F2,0F3,0B0,0B1,0B2,0B3\n", r"has 1 rows, one per worker, but pipeline.stages=2"),
    ("1F0,1F1,1F2,1F3,1B0,1B1,1B2,1B3\n0F0,0F1,0F2,0F3,0B0,0B1,0B2,0B3\n", r"must place stage 0 on worker 0"),
    ("0F0,0F1,0F2,0F3,0B0,0B1,0B2,0B3\n1F0,1B0,1F1,1B1,1F2,1B2,1F3,1B3,2F0\n", r"same number of stages"),
    ("0F0,0F1,0F2,0B0,0B1,0B2\n1F0,1B0,1F1,1B1,1F2,1B2\n", r"pipeline.microbatches=4: Got 3 .*FORWARD"),
    ("0F0,0F1,0F2,0F3,0B0,0B1,0B2,0B3\n1F0,1W0,1F1,1B1,1F2,1B2,1F3,1B3\n", r"Backward Weight .* without first"),
    # worker 1 wants micro-batch 1 first, which worker 0 sends only after micro-batch 0's backward: a hang
    ("0F0,0B0,0F1,0B1,0F2,0B2,0F3,0B3\n1F1,1B1,1F0,1B0,1F2,1B2,1F3,1B3\n", r"not a valid schedule.*can't schedule"),
], ids=["missing", "bad-cell", "comms", "binary", "empty", "rows", "stage0", "unequal", "microbatches",
        "w-before-i", "hang"])
def test_a_bad_csv_schedule_is_refused_at_config_load_naming_the_file(tmp_path, text, words):
    path = tmp_path / "missing.csv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=words) as err:
        pipeline("pipeline.stages=2", f"pipeline.schedule=csv:{path}")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_pipeline_trace_is_off_unless_asked():
    assert pipeline("pipeline.stages=2").trace is False
    assert pipeline("pipeline.stages=2", "pipeline.trace=true").trace is True  # the trace: test_equivalence.py
