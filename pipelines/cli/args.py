"""Argument types the sub-commands share."""
from __future__ import annotations

import argparse


def image_size(text: str) -> tuple[int, int]:
    """`512`, `256x192` (height x width)."""
    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512 or 256x192, got {text!r}") from None
    if len(dims) == 1:
        return dims[0], dims[0]
    if len(dims) == 2:
        return dims[0], dims[1]
    raise argparse.ArgumentTypeError(f"size must look like 512 or 256x192, got {text!r}")


def add_config_args(parser: argparse.ArgumentParser, default: str | None = "cpu_small") -> None:
    parser.add_argument("--config", default=default,
                        help=f"YAML file or bundled config name (default: {default})")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
