"""`pgnet mlflow sync`: send to MLflow what a run (or a sweep's trials) could not send while it ran."""
from __future__ import annotations

import argparse
from pathlib import Path

from pgnet.errors import MissingFileError, PGNetError, TrackingError
from pgnet.run.layout import MLFLOW_FILE

SWEEP_TRIALS = "trials"  # pipelines.sweeps.sweep.TRIALS_DIR, named here so this command loads no Ray


def add_parsers(sub) -> None:
    p = sub.add_parser("mlflow", help="MLflow upkeep: send what an unreachable server missed")
    commands = p.add_subparsers(dest="mlflow_command", required=True)
    s = commands.add_parser("sync", help="send the missing part of runs to their MLflow runs, never twice")
    s.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="a `pgnet train` run directory, a sweep trial's, or a sweep's folder (all its trials)")
    s.set_defaults(func=cmd_sync)


def tracked_dirs(path: Path) -> list[Path]:
    """The tracked run directories at `path`: itself, or a sweep folder's trials."""
    if (path / MLFLOW_FILE).is_file():
        return [path]
    trials = sorted(p for p in (path / SWEEP_TRIALS).glob("*") if (p / MLFLOW_FILE).is_file())
    if trials:
        return trials
    raise MissingFileError(f"{path} holds no tracked run ({MLFLOW_FILE}) and no sweep trials: give a run directory "
                           "of `pgnet train` (with MLflow on) or a sweep's folder")


def cmd_sync(args: argparse.Namespace) -> int:
    from pipelines.tracking.mirror import RunMirror
    dirs = [d for given in args.run_dirs for d in tracked_dirs(Path(given).absolute())]
    for run_dir in dirs:
        mirror = RunMirror.of(run_dir)
        before = mirror.pending()
        try:
            report = mirror.sync(final=True)
        except PGNetError:
            raise
        except Exception as exc:  # the client raises many types for an unreachable server
            raise TrackingError(f"MLflow at {mirror.ledger.uri} did not answer ({type(exc).__name__}) while "
                                f"{run_dir} was sent; what arrived is noted, run the command again once it "
                                "answers") from exc
        sent = [f"created MLflow run {mirror.ledger.run_id}"] if report.created else []
        if report.steps or report.evaluations:
            sent.append(f"{report.steps} step records, {report.evaluations} evaluations")
        if report.ended and any(p.startswith(("the files", "the end status")) for p in before):
            sent.append(f"files, plots, model and status {mirror.ledger.status}")
        print(f"{run_dir}: " + ("; ".join(sent) if sent else "already in MLflow, nothing to send")
              + ("" if mirror.ledger.status else " (the run has not ended: its MLflow status stays RUNNING)"))
    return 0
