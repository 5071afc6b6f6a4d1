"""`pgnet sweep --dry-run`: every trial, its resources and the base config, read from the sweep file alone.

No Ray is imported, let alone started: the listing is the sweep file's arithmetic, checked here per line.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from pipelines.cli import main
from pipelines.sweeps.dry_run import describe_sweep
from pipelines.sweeps.spec import SWEEP_DIR, load_sweep

REPO = Path(__file__).resolve().parents[3]
LOSSES = ["iou", "giou", "diou", "ciou", "cdiou"]


def trial_rows(text: str) -> list[str]:
    """The numbered trial lines (`  3. loss.box=diou`), without their numbers."""
    rows = []
    for line in text.splitlines():
        number, dot, rest = line.strip().partition(". ")
        if line.startswith("  ") and dot and number.isdigit():
            rows.append(rest)
    return rows


def write_sweep(tmp_path: Path, overrides: str, search_space: str, extra: str = "") -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"name: t\nbase: cpu_small\noverrides: {overrides}\nsearch_space:\n{search_space}{extra}")
    return path


def test_the_smoke_sweep_lists_its_five_loss_variants(capsys):
    assert main(["sweep", "--config", "smoke", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"sweep smoke ({SWEEP_DIR / 'smoke.yaml'})")
    assert trial_rows(out) == [f"loss.box={loss}" for loss in LOSSES]
    assert "trials: 5 (5 loss.box x num_samples 1), at most 2 at a time" in out
    assert "scheduler: none" in out and "searcher: grid" in out
    # the YAML at the end is the first trial's resolved config: the sweep's overrides applied to cpu_small
    base = yaml.safe_load(out.split("with the swept keys at their first value):\n", 1)[1])
    assert base == load_sweep("smoke").base_config().to_dict()
    assert base["model"]["norm"] == "gn" and base["loss"]["box"] == "iou" and base["train"]["eval_every"] == 1


def test_table3_lists_the_nine_cells_of_the_paper():
    sweep = load_sweep("table3_ablation")
    # seed/PGNet-paper.txt, Table 3: the row groups ResNet50+FPN, ResNet101+FPN, ResNet50+proposed (CFFM),
    # each with GN, syncGN (read as SyncBN) and CBN, in the paper's order
    expected = [f"model.backbone={backbone}, model.neck={neck}, model.norm={norm}"
                for backbone, neck in (("resnet50", "fpn"), ("resnet101", "fpn"), ("resnet50", "cffm"))
                for norm in ("gn", "syncbn", "cbn")]
    text = describe_sweep(sweep)
    assert trial_rows(text) == expected
    assert "trials: 9 (3 arch x 3 model.norm x num_samples 1)" in text
    assert f"at most {sweep.max_concurrent_trials} at a time" in text
    assert "GPUs (one per worker)" in text  # the file sets ray.use_gpu
    assert "scheduler: none" in text  # every cell trains to the end


def test_a_sampled_dimension_shows_its_domain_in_every_trial(tmp_path):
    path = write_sweep(tmp_path, "{pipeline.stages: 2}",
                       "  loss.box: {grid: [giou, cdiou]}\n  optim.lr: {loguniform: [0.0001, 0.01]}\n",
                       "num_samples: 3\n")
    rows = trial_rows(describe_sweep(load_sweep(path)))
    # the grid is crossed in full once per sample; Tune draws the learning rate when each trial starts
    assert rows == [f"loss.box={loss}, optim.lr ~ loguniform(0.0001, 0.01)  (sample {s} of 3)"
                    for s in (1, 2, 3) for loss in ("giou", "cdiou")]


def test_the_resources_line_counts_stages_times_replicas(tmp_path):
    path = write_sweep(tmp_path, "{pipeline.stages: 2, pipeline.data_parallel: 2, ray.cpus_per_worker: 1.5}",
                       "  loss.box: {grid: [giou, diou, cdiou]}\n", "max_concurrent_trials: 2\n")
    text = describe_sweep(load_sweep(path))
    # 2 stages x 2 replicas = 4 workers x 1.5 CPUs = 6, and a 0.1-CPU driver (ray_runtime.DRIVER_CPU) per trial
    assert ("resources per trial: 4 Ray Train workers (pipeline.stages 2 x pipeline.data_parallel 2), "
            "1.5 CPU each (ray.cpus_per_worker), no GPU (ray.use_gpu: false)") in text
    assert "  = 6 CPUs for the workers + 0.1 for the trial's driver = 6.1 CPUs" in text
    assert "2 concurrent trials need 12.2 CPUs" in text


def test_a_dry_run_imports_no_ray():
    probe = ("import sys\n"
             "from pipelines.sweeps.dry_run import describe_sweep\n"
             "from pipelines.sweeps.spec import load_sweep\n"
             "text = describe_sweep(load_sweep('lr_guidance_optuna'))\n"
             "assert 'optim.lr ~ loguniform(0.0003, 0.01)' in text, text\n"
             "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
