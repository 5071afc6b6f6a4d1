"""The `pgnet` command line: one module per group of sub-commands, assembled in `pipelines.cli.main`."""
from pipelines.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
