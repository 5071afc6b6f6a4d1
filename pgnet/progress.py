"""Progress bars for long work (training, evaluation, data generation), quiet when disabled."""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress_bar(iterable: Iterable[T], enabled: bool = True, **kwargs) -> Iterable[T]:
    if not enabled:
        return iterable
    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, mininterval=1.0, **kwargs)
