"""Decoded images held in RAM (`data.cache: ram`), so that a run decodes each image once, not once per epoch.

Ultralytics' `cache=ram`: the images are read up front, with a progress bar, when they fit in the
memory available with a safety margin; otherwise a warning says so and the run reads from disk as usual.
An unreadable image is kept as its BadSample, so that every epoch still counts and skips it.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from PIL import Image

from pgnet.data.records import ImageRecord
from pgnet.data.sample import BadSample, read_image
from pgnet.progress import progress_bar

log = logging.getLogger("pgnet.data")

BYTES_PER_PIXEL = 4  # PIL holds an RGB image as 32-bit pixels
SAFETY_MARGIN = 0.5  # Ultralytics' margin: the cache may take at most 1 / 1.5 of the memory available


def cache_bytes(records: Sequence[ImageRecord]) -> int:
    """What holding every image of `records` decoded takes, from their annotated sizes."""
    return sum(r.height * r.width for r in records) * BYTES_PER_PIXEL


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (Linux `MemAvailable`, else free pages);
    None where neither can be read (macOS has no `SC_AVPHYS_PAGES`)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def cache_images(records: Sequence[ImageRecord], *, name: str, progress: bool = True,
                 available: int | None = None) -> dict[int, Image.Image | BadSample] | None:
    """Every record's decoded image (or its BadSample) by image id; None, with a warning, when the
    images would take more than the memory `available` (measured when not given) allows."""
    needed = cache_bytes(records)
    available = available_memory() if available is None else available
    if available is None:
        log.warning("data.cache=ram: cannot measure the memory available here; caching %.1f GiB of images "
                    "unchecked (set data.cache=none if that is too much)", needed / 2**30)
    elif needed * (1 + SAFETY_MARGIN) > available:
        log.warning("data.cache=ram: the %d images of %s need %.1f GiB (%.1f GiB with a %d%% margin) but only "
                    "%.1f GiB of memory is available, so they are read from disk every epoch; free memory or "
                    "set data.cache=none to silence this", len(records), name, needed / 2**30,
                    needed * (1 + SAFETY_MARGIN) / 2**30, SAFETY_MARGIN * 100, available / 2**30)
        return None
    images: dict[int, Image.Image | BadSample] = {}
    for record in progress_bar(records, enabled=progress, desc=f"cache {name}", unit="img"):
        try:
            images[record.image_id] = read_image(record.file, (record.height, record.width))
        except BadSample as err:
            images[record.image_id] = err
    log.info("data.cache=ram: %d images of %s decoded into %.2f GiB", len(images), name, needed / 2**30)
    return images
