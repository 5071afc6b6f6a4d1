"""torch files written atomically and read safely: `torch.save` into place, `torch.load(weights_only=True)`.

Reading never unpickles objects or code: a file that needs more than tensors and plain containers is
refused with a message naming what it should have been.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import struct
import warnings
from pathlib import Path
from typing import Any

import torch

from pgnet.atomic import atomic_path
from pgnet.errors import CheckpointError


def save_atomic(obj: Any, path: str | Path) -> Path:
    """`torch.save`, atomically: never a torn checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_keeping_previous(obj: Any, path: str | Path, previous: str | Path) -> Path:
    """`save_atomic`, and the file it replaces moved to `previous` once the new one is completely written:
    a failed write (a full disk) leaves `path` as it was, and `path` is never missing while `previous` is not."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        if path.exists():
            _replace_keeping(path, Path(previous))
    return path


def _replace_keeping(path: Path, previous: Path) -> None:
    """Copy `path` to `previous` by hard link when it can (no bytes copied), atomically either way."""
    with atomic_path(previous) as tmp:
        tmp.unlink()
        try:
            os.link(path, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(path, tmp)


def read_torch_file(path: str | Path, *, what: str) -> Any:
    """`torch.load(weights_only=True)` to CPU. A file that is not a torch save, or that needs more than
    tensors and plain containers (objects, code), is refused by a CheckpointError naming `what` it should
    be; nothing in it runs."""
    try:
        with warnings.catch_warnings():  # a pickle of another protocol is refused below, with a clear message
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch names the refused callable: "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose ..."
        names = re.findall(r"unsupported global:?\s+(?:global\s+)?([\w.]+)", str(err), flags=re.IGNORECASE)
        if names:
            raise CheckpointError(f"'{path}' refers to Python objects or code ({names[0]}), which this platform "
                                  f"never unpickles: it is not a plain checkpoint; pass {what}") from None
        raise CheckpointError(f"'{path}' is not a torch checkpoint of tensors and plain values "
                              f"({_reason(err)}); pass {what}") from None
    except (EOFError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"'{path}' cannot be read by torch.load ({_reason(err)}); pass {what}") from None
    except (IndexError, KeyError, struct.error):  # random bytes also fail inside the unpickler so
        raise CheckpointError(f"'{path}' is not a torch checkpoint (its bytes are not a torch save); "
                              f"pass {what}") from None


def _reason(err: Exception) -> str:
    """The informative line of a torch.load error."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = [line for line in lines if line.lower().startswith(("unsupported", "trying to load"))]
    return (detail or lines or [type(err).__name__])[0]
