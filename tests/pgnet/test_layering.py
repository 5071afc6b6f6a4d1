"""Layering: `pgnet/` is plain PyTorch and never imports Ray (DEVELOPERS.md, "Layering").

Each module is imported as the first pgnet module of a clean interpreter, so an import cycle that
only shows in some import order fails here too.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pgnet"
RAY_IMPORT = re.compile(r"^\s*(import\s+ray\b|from\s+ray(\.|\s+import\b))", re.MULTILINE)

# Walks pgnet, imports every module with every pgnet module dropped from sys.modules first, and
# reports what failed and which Ray or pipelines modules got imported.
PROBE = r"""
import importlib, json, pkgutil, sys, traceback
import pgnet
names = sorted(m.name for m in pkgutil.walk_packages(pgnet.__path__, "pgnet."))
failed = {}
for name in names:
    for loaded in [m for m in sys.modules if m == "pgnet" or m.startswith("pgnet.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed[name] = traceback.format_exc(limit=3)
banned = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "pipelines"))
print(json.dumps({"modules": names, "failed": failed, "banned": banned}))
"""


def test_every_pgnet_module_imports_alone_and_without_ray():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                         cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    expected = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
                for p in PACKAGE.rglob("*.py")}
    assert set(report["modules"]) | {"pgnet"} == expected  # the walk saw every file
    assert report["failed"] == {}, "\n".join(report["failed"].values())
    assert report["banned"] == [], f"pgnet imported {report['banned']}; Ray code belongs in pipelines/"


def test_no_pgnet_file_imports_ray():
    offenders = [str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                 if "import ray" in p.read_text() or RAY_IMPORT.search(p.read_text())]
    assert offenders == [], f"{offenders} import Ray; move that code to pipelines/"


def test_the_ray_pattern_catches_the_import_forms():
    for line in ("import ray", "import ray.train", "from ray import train", "from ray.train import report",
                 "    import ray  # lazy"):
        assert RAY_IMPORT.search(line), line
    for line in ("import rayon", "from raytracing import x", "# see array"):
        assert not RAY_IMPORT.search(line), line
