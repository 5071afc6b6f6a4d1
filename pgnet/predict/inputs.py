"""What `pgnet predict` was given: image files and video files, by suffix, from files and folders.

Checked before any model is loaded, so a misspelt path or a folder of the wrong things fails at once
with a message that says what to pass instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pgnet.errors import DataError, MissingFileError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Containers FFmpeg (PyAV) reads; `.ts` is left out: it is also the suffix of a TorchScript model.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
                  ".ogv")


@dataclass(frozen=True)
class Inputs:
    """The files to predict on, each kind in the order given (a folder's files sorted by name)."""
    images: list[Path]
    videos: list[Path]


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def split_inputs(paths: list[str | Path]) -> Inputs:
    """Each file as given, each folder's images and videos (by suffix, sorted; not its sub-folders, and
    its other files ignored). Raises MissingFileError for a path that does not exist, DataError for a
    file that is neither an image nor a video and for a folder that holds neither."""
    images: list[Path] = []
    videos: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and (is_image(p) or is_video(p)))
            if not found:
                raise DataError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}) or videos "
                                f"({', '.join(VIDEO_SUFFIXES)}); pass image or video files, or a folder of them")
        elif not path.exists():
            raise MissingFileError(f"{path} does not exist; pass image or video files, or folders of them")
        elif is_image(path) or is_video(path):
            found = [path]
        else:
            raise DataError(f"{path} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a video "
                            f"({', '.join(VIDEO_SUFFIXES)}); rename it if it is one, or leave it out")
        images.extend(p for p in found if is_image(p))
        videos.extend(p for p in found if is_video(p))
    return Inputs(images, videos)
