"""`pgnet bench small-maps`: both settings timed, and the ratio printed is the one returned."""
from __future__ import annotations

from pipelines.bench.small_maps import run_small_map_benchmark


def test_bench_prints_both_settings_and_their_ratio():
    lines: list[str] = []
    results = run_small_map_benchmark("cpu_small", batch=2, pairs=2, threads=1, print_fn=lines.append)
    assert set(results) == {"images_per_s_off", "images_per_s_on", "speedup"}
    assert all(v > 0 for v in results.values())
    assert any("model.small_map_matmul=false" in line for line in lines)
    assert any("model.small_map_matmul=true" in line for line in lines)
    assert lines[-1].startswith(f"small_map_matmul makes a training step {results['speedup']:.2f}x")
