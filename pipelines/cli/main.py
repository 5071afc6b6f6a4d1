"""`pgnet`: train, eval, predict, infer, export, data synth, bench, sweep, report, demo, mlflow sync, plan.

Each group of sub-commands lives in its own module (`training`, `inference`, `data`, `sweeps`,
`bench`); Ray is imported only by the commands that need it. A user error (`pgnet.errors.PGNetError`:
a bad config key, a missing file) prints one line that says what to do and exits 2; anything
else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys

from pgnet.errors import PGNetError
from pipelines.cli import bench, data, export, infer, inference, plan, sweeps, tracking, training

log = logging.getLogger("pgnet")

COMMAND_GROUPS = (training, inference, infer, export, data, bench, sweeps, tracking, plan)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgnet", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors too")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except PGNetError as err:
        if args.debug:
            raise
        print(f"pgnet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
