"""A non-editable install ships what `pgnet` needs outside the checkout: bundled sweeps and training configs.

Builds the wheel, installs it into a folder of its own and runs `pgnet sweep --dry-run` from elsewhere.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
# What setuptools reads to build the wheel (pyproject.toml has no MANIFEST.in or setup.py beside it).
BUILD_INPUTS = ("pyproject.toml", "README.md", "pgnet", "pipelines", "tune_configs")


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{args}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def build_wheel(tmp_path: Path) -> Path:
    """The checkout's wheel. Built from a copy: setuptools writes build/ into the source folder (stale
    modules there would end up in later wheels) and this tree is shared with other work."""
    source = tmp_path / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        item = REPO / name
        if item.is_dir():
            shutil.copytree(item, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(item, source / name)
    wheels = tmp_path / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(source)]
    built = subprocess.run([*pip_wheel, "--no-build-isolation"], capture_output=True, text=True, timeout=600)
    if built.returncode != 0:  # no setuptools in this environment: let pip fetch one into an isolated build
        run(pip_wheel, tmp_path)
    (wheel,) = wheels.glob("pgnet-*.whl")
    return wheel


@pytest.mark.slow
def test_an_installed_wheel_runs_a_bundled_sweep_from_anywhere(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"tune_configs/__init__.py", "tune_configs/smoke.yaml", "pgnet/configs/cpu_small.yaml",
            "pipelines/cli/__main__.py"} <= names
    target, elsewhere = tmp_path / "installed", tmp_path / "elsewhere"
    elsewhere.mkdir()
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)], tmp_path)
    # The installed copy first; the dependencies (torch, PyYAML) still come from this interpreter's site-packages.
    env = {**os.environ, "PYTHONPATH": str(target)}

    out = run([sys.executable, "-m", "pipelines.cli", "sweep", "--config", "smoke", "--dry-run"], elsewhere, env)
    assert out.stdout.startswith(f"sweep smoke ({target / 'tune_configs' / 'smoke.yaml'})")
    assert f"base config: {target / 'pgnet' / 'configs' / 'cpu_small.yaml'}" in out.stdout
    for n, loss in enumerate(["iou", "giou", "diou", "ciou", "cdiou"], start=1):
        assert f"  {n}. loss.box={loss}\n" in out.stdout

    where = run([sys.executable, "-c", "import pgnet, pipelines, tune_configs\n"
                 "for m in (pgnet, pipelines, tune_configs): print(m.__file__)"], elsewhere, env)
    assert [Path(f).parent.parent for f in where.stdout.split()] == [target] * 3
