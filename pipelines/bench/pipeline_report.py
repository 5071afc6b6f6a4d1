"""What `pgnet bench pipeline` prints: the table (median and spread per configuration), the zero-bubble
schedules against 1F1B at each S, the verdicts, the data wait of a Ray Data run, and the planner's simulator
against every measured configuration (the same comparison as `pgnet plan --validate`)."""
from __future__ import annotations

from typing import Any

from pipelines.planning.cluster import load_cluster
from pipelines.planning.validate import compare_record, format_comparisons

S1_SPREAD_TARGET = 0.10  # the S=1 runs of one bench may differ by at most this (max - min) / median
BOUND_TARGET = 0.9  # the best S=2 schedule reaches this fraction of the bubble bound
ZERO_BUBBLE = ("interleaved_zb", "zbv", "dualpipev")


def print_report(record: dict[str, Any], print_fn) -> list[dict[str, Any]]:
    """Print the record's results; returns the validation rows (kept in the JSON record)."""
    s, rows = record["settings"], record["results"]
    print_fn(f"PGNet resnet18 GN, input {s['input_size']}x{s['input_size']}, batch {s['batch']}, M={s['microbatches']} "
             f"micro-batches, {s['threads']} thread per worker, pre-encoded batches; {s['repeats']} runs per "
             f"configuration in interleaved rounds, {s['steps'] - s['warmup_steps']} timed steps each after "
             f"{s['warmup_steps']} warm-up steps")
    print_fn(f"{'configuration':<24} {'s/step':>7} {'spread':>7} {'images/s':>9} {'vs S=1':>7} {'bound':>6} "
             f"{'of bound':>8}  runs (s/step)")
    for r in rows:
        runs = " ".join(f"{t:.3f}" for t in r["runs_step_s"])
        print_fn(f"{r['label']:<24} {r['step_s']:>7.3f} {r['step_s_spread']:>7.1%} {r['images_per_s']:>9.2f} "
                 f"{r['speedup']:>6.2f}x {r['bubble_bound']:>5.2f}x {r['of_bound']:>8.2f}  {runs}")
    _print_zero_bubble(rows, print_fn)
    _print_verdicts(rows, print_fn)
    feed = record["ray_data_feed"]
    if feed["preencoded_step_s"]:
        print_fn(f"data wait, {feed['variant']} read from Ray Data (one run): {feed['wait_fraction']:.1%} of a timed "
                 f"step ({feed['epoch_wait_fraction']:.1%} of the epoch, Ray Data's start-up included); "
                 f"{feed['step_s']:.3f} s/step against {feed['preencoded_step_s']:.3f} pre-encoded "
                 f"({feed['step_s'] / feed['preencoded_step_s']:.2f}x)")
    comparisons = compare_record(record, load_cluster("this-machine"))
    print_fn("the planner's simulator (cluster this-machine, the unit costs above) against the measured medians:")
    for line in format_comparisons(comparisons).splitlines():
        print_fn(line)
    return [{"label": r["label"], "measured_s": c.measured_s, "predicted_s": c.predicted_s, "error": c.error,
             "reason": c.reason} for r, c in zip(rows, comparisons)]


def _print_zero_bubble(rows: list[dict[str, Any]], print_fn) -> None:
    for stages in sorted({r["stages"] for r in rows if r["stages"] > 1}):
        ref = next((r for r in rows if r["stages"] == stages and r["schedule"] == "1f1b"), None)
        others = [r for r in rows if r["stages"] == stages and r["schedule"] in ZERO_BUBBLE]
        if ref and others:
            print_fn(f"S={stages}, step time against 1F1B ({ref['step_s']:.3f} s): " + "; ".join(
                f"{r['label'].split(' ', 1)[1]} {r['step_s'] / ref['step_s']:.2f}x" for r in others)
                + " (below 1: faster)")


def _print_verdicts(rows: list[dict[str, Any]], print_fn) -> None:
    base = next(r for r in rows if r["stages"] == 1)
    ok = "met" if base["step_s_spread"] < S1_SPREAD_TARGET else "NOT met"
    print_fn(f"S=1 spread within this run: {base['step_s_spread']:.1%} (target < {S1_SPREAD_TARGET:.0%}: {ok})")
    two = [r for r in rows if r["stages"] == 2]
    if two:
        best = max(two, key=lambda r: r["of_bound"])
        ok = "met" if best["of_bound"] >= BOUND_TARGET else "NOT met"
        print_fn(f"best at S=2: {best['label']}, {best['speedup']:.2f}x one worker, {best['of_bound']:.2f} of the "
                 f"bubble bound (target >= {BOUND_TARGET}: {ok})")
