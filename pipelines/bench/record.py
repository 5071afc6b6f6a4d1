"""`pgnet bench <name> --out DIR`: a dated Markdown and JSON record of one benchmark run and its machine.

A ratio means little without the machine, the versions and the command that produced it, so each
record holds them beside the printed table (Markdown, for people) and the returned numbers (JSON).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from pgnet.errors import ConfigError

PrintFn = Callable[[str], Any]
CHECKOUT = Path(__file__).resolve().parents[2]  # the repository that holds `pipelines/`


def recorded_run(name: str, out: Path | None, arguments: Mapping[str, Any], run: Callable[[PrintFn], Any],
                 attachments: Callable[[Any], Mapping[str, str | Path]] | None = None) -> Any:
    """`run(print_fn)`, its lines printed as they come; with `out`, also written to a record in `out`, and
    the files `attachments(results)` names (suffix -> path) copied beside it under the record's name.

    `out` is checked before the run, so that a long benchmark does not end on an unusable folder."""
    if out is not None:
        prepare_out_dir(out)
    lines: list[str] = []

    def print_and_keep(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    results = run(print_and_keep)
    if out is not None:
        md, js = write_record(out, name, lines, results, arguments)
        copied = [shutil.copyfile(path, md.with_suffix(f".{suffix}"))
                  for suffix, path in (attachments(results) if attachments else {}).items()]
        print(f"wrote {md} and {', '.join(Path(p).name for p in [js, *copied])}")
    return results


def prepare_out_dir(out: Path) -> None:
    """`out`, created if missing; a ConfigError if it cannot hold records."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; name a folder for the benchmark records")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot create the folder ({err.strerror}); name a writable folder") from None


def write_record(out: Path, name: str, lines: Sequence[str], results: Any, arguments: Mapping[str, Any],
                 command: Sequence[str] | None = None, now: dt.datetime | None = None) -> tuple[Path, Path]:
    """`out/<date>-<name>.md` and `.json` (`-2`, `-3`... when the day already has one); their paths.

    `command` defaults to this process's command line, `now` to the local time."""
    prepare_out_dir(out)
    now = now or dt.datetime.now().astimezone()
    command_line = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]] if command is None else command)
    machine = machine_info()
    md, js = _claim_paths(out, f"{now:%Y-%m-%d}-{name}")
    record = {"benchmark": name, "date": now.isoformat(timespec="seconds"), "command": command_line,
              "machine": machine, "arguments": json_safe(dict(arguments)), "results": json_safe(results)}
    js.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    md.write_text(_markdown(name, now, machine, command_line, lines))
    return md, js


def _claim_paths(out: Path, stem: str) -> tuple[Path, Path]:
    """The first free pair of `stem`, `stem-2`, ...: the Markdown file is created exclusively, so that two
    runs finishing together cannot take the same name."""
    n = 1
    while True:
        base = stem if n == 1 else f"{stem}-{n}"
        md, js = out / f"{base}.md", out / f"{base}.json"
        if not js.exists():
            try:
                md.open("x").close()
                return md, js
            except FileExistsError:
                pass
        n += 1


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare two records: CPU, cores, RAM, OS, versions, threads, commit, load."""
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return {
        "cpu": _cpu_model(),
        "logical_cores": cores,
        "usable_cores": usable,  # fewer than logical_cores when the process is pinned (taskset, containers)
        "ram_gib": _ram_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": _version("ray"),
        "torch_threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
        # other jobs on a shared machine skew a run: 1, 5 and 15-minute load averages as the run ends
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        return None


def _version(package: str) -> str | None:
    """The installed version, read without importing the package (importing Ray takes seconds)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """HEAD of the checkout, `+ uncommitted changes` when its tracked files differ; None outside git."""
    def git(*args: str) -> str:
        # --no-optional-locks: reading the status must not rewrite the index of a checkout in use
        return subprocess.run(["git", "--no-optional-locks", "-C", str(CHECKOUT), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit} + uncommitted changes" if dirty else commit


def json_safe(value: Any) -> Any:
    """`value` as JSON can hold it: dataclasses and mappings as objects, tuples as lists, tensors and
    NumPy values as numbers, NaN and infinities as null (JSON has none), anything else as its text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "tolist"):  # torch tensors and NumPy arrays or scalars
        return json_safe(value.tolist())
    return str(value)


def _markdown(name: str, now: dt.datetime, machine: Mapping[str, Any], command: str, lines: Sequence[str]) -> str:
    rows = [("CPU", machine["cpu"]),
            ("Cores", f"{machine['logical_cores']} logical, {machine['usable_cores']} usable"),
            ("RAM", "unknown" if machine["ram_gib"] is None else f"{machine['ram_gib']} GiB"),
            ("OS", machine["os"]), ("Python", machine["python"]), ("torch", machine["torch"]),
            ("Ray", machine["ray"] or "not installed"), ("torch threads", machine["torch_threads"]),
            ("Commit", machine["git_commit"] or "not a git checkout"),
            ("Load average", "unknown" if machine["load_average"] is None else
             ", ".join(map(str, machine["load_average"])) + " (1, 5, 15 min, as the run ended)")]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    output = "\n".join(lines)
    return (f"# pgnet bench {name}\n\n{now:%Y-%m-%d %H:%M:%S %Z}\n\n## Machine\n\n| | |\n|---|---|\n{table}\n\n"
            f"## Command\n\n```\n{command}\n```\n\n## Output\n\n```\n{output}\n```\n")
