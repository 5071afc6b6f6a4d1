"""What the `pgnet` command-line tests share: the installed script and an in-process call."""
from __future__ import annotations

from pipelines.cli import main
from tests.support.paths import REPO

SCRIPT = REPO / ".venv" / "bin" / "pgnet"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err
