"""Errors a user can act on. The `pgnet` command prints their message on one line and exits 2.

Anything else that escapes a command is a bug in the platform: it keeps its traceback. Each class
also derives from the built-in error it refines, so `except ValueError` still catches a bad value.
"""
from __future__ import annotations


class PGNetError(Exception):
    """A problem with the user's input or environment, worded as what to do next."""


class ConfigError(PGNetError, ValueError):
    """A configuration file, sweep file or `--set` override that cannot be used as given."""


class DataError(PGNetError, ValueError):
    """A data set, annotation file, image or results file that cannot be used as given."""


class CheckpointError(PGNetError, ValueError):
    """A file that is not a checkpoint this platform can load, or one of another network."""


class MissingFileError(PGNetError, FileNotFoundError):
    """A file or folder the user named (or a run needs) does not exist."""


class OutputExistsError(PGNetError, FileExistsError):
    """A place to write (a run directory, a data folder, a sweep's storage) that already holds something else."""


class TrainingError(PGNetError, RuntimeError):
    """Training stopped for a reason the user can act on: too many bad images, a non-finite loss,
    a cluster too small for the plan, a failed pipeline worker."""


class TrackingError(PGNetError, RuntimeError):
    """The tracking store (MLflow) cannot be reached where the work cannot go on without it."""
