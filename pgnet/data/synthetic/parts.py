"""The drawable parts of a scene (segments, discs, polygons) and how PIL draws them.

Figures and occluders are lists of parts: geometry first, colours chosen later by role.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PIL import ImageDraw

# A part is (kind, points (k, 2), size, role): kind "seg" (size = width), "disc" (size = radius)
# or "poly"; role names the colour ("shirt", "skin_left", ...) so geometry is fixed before colours.

Part = tuple[str, np.ndarray, float, str]


def _seg(p0: np.ndarray, p1: np.ndarray, width: float, role: str) -> Part:
    return ("seg", np.stack([p0, p1]), width, role)


def _disc(centre: np.ndarray, radius: float, role: str) -> Part:
    return ("disc", centre[None, :], radius, role)


def _poly(points: np.ndarray, role: str) -> Part:
    return ("poly", np.asarray(points, dtype=np.float64), 0.0, role)


def _disc_box(x: float, y: float, r: float) -> list[int]:
    """An ellipse's inclusive pixel box around pixel round(x), round(y).

    Lines and polygons put pixel i's centre at coordinate i, while PIL truncates an ellipse's
    float box toward zero (shifting discs by up to a pixel, differently at negative coordinates),
    so the box is rounded here.
    """
    return [math.floor(x - r + 0.5), math.floor(y - r + 0.5), math.floor(x + r + 0.5), math.floor(y + r + 0.5)]


def _draw_parts(draw: ImageDraw.ImageDraw, parts: list[Part], fill_of: Callable[[str], object]) -> None:
    for kind, pts, size, role in parts:
        fill = fill_of(role)
        if kind == "seg":
            (x0, y0), (x1, y1) = pts
            width = max(1, int(round(size)))
            draw.line([(x0, y0), (x1, y1)], fill=fill, width=width)
            r = max(width / 2.0, 1.0)  # round caps: joints show no gaps and cover their key point
            draw.ellipse(_disc_box(x0, y0, r), fill=fill)
            draw.ellipse(_disc_box(x1, y1, r), fill=fill)
        elif kind == "disc":
            (x, y), r = pts[0], max(size, 0.7)
            draw.ellipse(_disc_box(x, y, r), fill=fill)
        else:
            draw.polygon([tuple(p) for p in pts], fill=fill)


def _parts_box(parts: list[Part]) -> np.ndarray:
    """x0, y0, x1, y1 around every part, widths included."""
    points = np.concatenate([pts for _, pts, _, _ in parts])
    pads = np.concatenate([np.full(len(pts), size / 2.0 if kind == "seg" else size)
                           for kind, pts, size, _ in parts])
    return np.concatenate([(points - pads[:, None]).min(0), (points + pads[:, None]).max(0)])
