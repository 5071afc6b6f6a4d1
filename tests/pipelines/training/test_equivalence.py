"""Pipeline-parallel training on Ray Train computes what single-process training computes.

With GN (no coupling between samples), S stages x M micro-batches x D replicas
must give the single-process trainer's per-step losses and final parameters.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pgnet.run.checkpoint import load_checkpoint
from pgnet.run.layout import RunDir
from pgnet.run.metrics_log import read_jsonl
from pipelines.training.launch import latest_checkpoint, train_on_ray
from pipelines.training.shards import read_checkpoint
from tests.support.configs import pipeline_config

pytestmark = pytest.mark.ray

STEP_FIELDS = ("step", "epoch")


def assert_same_records(pipeline: list[dict], reference: list[dict], rel: float = 1e-4) -> None:
    """Per step, the same loss terms and LR; the first step (same weights) always to 1e-4, later ones to `rel`."""
    assert [tuple(r[k] for k in STEP_FIELDS) for r in pipeline] == [tuple(r[k] for k in STEP_FIELDS) for r in reference]
    for got, want in zip(pipeline, reference):
        assert set(got) == set(want)
        tolerance = 1e-4 if got["step"] == 1 else rel
        for key in want:
            if key.startswith("loss") or key == "lr":
                assert got[key] == pytest.approx(want[key], rel=tolerance, abs=1e-6), (got["step"], key)


def model_state_of(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None, f"no pipeline checkpoint in {run_dir}"
    _, model, _, _ = read_checkpoint(checkpoint)
    return model


def assert_same_parameters(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], rel: float = 1e-4) -> None:
    assert set(got) == set(want)
    diff = torch.sqrt(sum(((got[k].double() - want[k].double()) ** 2).sum() for k in want if want[k].is_floating_point()))
    norm = torch.sqrt(sum((want[k].double() ** 2).sum() for k in want if want[k].is_floating_point()))
    assert (diff / norm).item() < rel  # whole-model relative difference


# Every stage count once or more, and these schedules (1F1B: S=2 x D=2 in the data-parallel test; S=1 holds
# both virtual stages of interleaved 1F1B on one worker; dualpipev, looped_bfs, csv: and interleaved 1F1B on
# two workers: test_schedule_runs.py, without Ray). `extra` overrides go to the pipeline run and its
# single-process reference alike, `pipeline_extra` to the pipeline run only. The FPN case cuts ResNet-18's
# 22 units [11, 8, 3]: the first boundary falls inside the neck, after its P4 lateral (the bus carries C2,
# which `model.decoder_c2` sends to the decoder, C3 and the unfinished pyramid level), the second between
# the heads (the bus carries the decoder features, the guidance maps and the first three heads' outputs).
# NHWC stages send their activations to the next worker as contiguous buffers. bfloat16 stages compute under autocast and send float32 buses (the
# cast is exact). The reference accumulates gradients over the same micro-batches (`train.accumulate`): the
# forward passes then agree to float32 rounding, bfloat16 included, but bfloat16 backward passes still round
# differently across the stage boundaries, so after the first step (same weights: 1e-4) bf16 runs agree to 5e-3.
# The zero-bubble schedules split each backward into input and weight gradients (interleaved_zb: 3 workers x 2
# looped stages; zbv: a V, worker 0 holds stages 0 and 3 and so the loss); the zbv run also writes its trace.
@pytest.mark.parametrize("stages,schedule,extra,pipeline_extra", [
    (3, "gpipe", ("train.channels_last=true", "model.neck=fpn", "model.decoder_c2=true",
                  "pipeline.balance=[11, 8, 3]"), ()),
    (1, "interleaved_1f1b", ("train.precision=bf16",), ()), (3, "interleaved_zb", (), ()),
    (2, "zbv", (), ("pipeline.trace=true",)),
], ids=lambda v: "-".join(v) if isinstance(v, tuple) else str(v))
def test_pipeline_matches_single_process(local_ray, synthetic_dir, reference_run, tmp_path, stages, schedule,
                                         extra, pipeline_extra):
    cfg = pipeline_config(synthetic_dir, f"pipeline.stages={stages}", f"pipeline.schedule={schedule}", *extra,
                          *pipeline_extra)
    # the reference accumulates over the pipeline's micro-batches: the same shapes, so the same rounding
    reference, reference_dir = reference_run(*extra, f"train.accumulate={cfg.pipeline.microbatches}")
    rel = 5e-3 if cfg.train.precision == "bf16" else 1e-4
    summary = train_on_ray(cfg, tmp_path)
    assert summary["step"] == 3
    assert_same_records(read_jsonl(tmp_path / "metrics.jsonl"), reference, rel)
    want = load_checkpoint(reference_dir / "checkpoint_last.pt")["model"]
    assert_same_parameters(model_state_of(tmp_path), want, rel)
    assert RunDir(tmp_path).pipeline_trace.exists() == cfg.pipeline.trace
    if cfg.pipeline.trace:
        assert_trace_shows_every_span(RunDir(tmp_path).pipeline_trace, stages)


def assert_trace_shows_every_span(path: Path, workers: int) -> None:
    """Valid trace-event JSON of step 3; each worker has forward, input- and weight-gradient, send and
    receive spans; worker 1 starts its first forward after worker 0 ended its first (it needs the output)."""
    trace = json.loads(path.read_text())
    assert trace["otherData"]["step"] == 3
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in spans)
    for worker in range(workers):
        kinds = {e["cat"] for e in spans if e["pid"] == worker}
        assert {"forward", "backward_input", "backward_weight", "send", "recv"} <= kinds, (worker, kinds)
    first = {w: min((e for e in spans if e["pid"] == w and e["cat"] == "forward"), key=lambda e: e["ts"])
             for w in range(workers)}
    assert first[1]["ts"] >= first[0]["ts"] + first[0]["dur"]
    assert first[0]["args"] == {"stage": 0, "microbatch": 0} and first[1]["args"] == {"stage": 1, "microbatch": 0}


def test_data_parallel_matches_single_process_on_the_union_batch(dp_run, reference_run):
    reference, reference_dir = reference_run()
    _, run_dir, summary = dp_run
    assert summary["step"] == 3
    assert_same_records(read_jsonl(run_dir / "metrics.jsonl"), reference)
    want = load_checkpoint(reference_dir / "checkpoint_last.pt")["model"]
    got = model_state_of(run_dir)
    assert_same_parameters(got, want)
    last = load_checkpoint(run_dir / "checkpoint_last.pt")  # the whole model, for eval and predict
    assert last["step"] == 3 and set(last["model"]) == set(got)
    assert all(torch.equal(last["model"][k], got[k]) for k in got)
