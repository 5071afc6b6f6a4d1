"""Gaussian peaks for heatmap targets: CornerNet/CenterNet's size-adaptive radius and peak drawing.

`gaussian_radius` picks the radius from an object's size, `draw_gaussian` stamps a peak of height 1 into a map.
"""
from __future__ import annotations

import functools
import math

import numpy as np


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's `gaussian_radius`: how far a corner may move with IoU still near `min_overlap`.

    The three quadratics of CornerNet, solved exactly as CenterNet's code does (including its
    choice of root, so that heatmaps look like the ones every CenterNet-style model is trained
    on). Sizes are in output pixels; the caller takes `max(0, int(r))`.
    """
    h, w, o = float(height), float(width), float(min_overlap)
    b1 = h + w
    c1 = w * h * (1 - o) / (1 + o)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - o) * w * h
    r2 = (b2 + math.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3 = 4 * o
    b3 = -2 * o * (h + w)
    c3 = (o - 1) * w * h
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def heatmap_radius(height: float, width: float) -> int:
    """The integer peak radius for an object of this size (output pixels), as CenterNet uses it."""
    return max(0, int(gaussian_radius(math.ceil(height), math.ceil(width))))


@functools.lru_cache(maxsize=256)
def gaussian_2d(radius: int) -> np.ndarray:
    """A (2r+1, 2r+1) Gaussian with sigma = diameter / 6 and value 1 at its centre (cached: read-only)."""
    diameter = 2 * radius + 1
    sigma = diameter / 6
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    g = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    g[g < np.finfo(g.dtype).eps * g.max()] = 0  # CenterNet cuts the float-noise tail
    g.flags.writeable = False
    return g


def draw_gaussian(heatmap: np.ndarray, center: tuple[int, int], radius: int) -> np.ndarray:
    """Stamp a Gaussian peak at integer `center` (x, y) into the (H, W) `heatmap` in place (element-wise max).

    CenterNet's `draw_umich_gaussian`: overlapping peaks keep the larger value, so two people
    close together both keep their peak of 1. Parts outside the map are cut off.
    """
    radius = int(radius)
    x, y = int(center[0]), int(center[1])
    height, width = heatmap.shape[:2]
    if not (0 <= x < width and 0 <= y < height):
        return heatmap
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    gaussian = gaussian_2d(radius)
    patch = heatmap[y - top:y + bottom, x - left:x + right]
    stamp = gaussian[radius - top:radius + bottom, radius - left:radius + right].astype(heatmap.dtype)
    np.maximum(patch, stamp, out=patch)
    return heatmap
