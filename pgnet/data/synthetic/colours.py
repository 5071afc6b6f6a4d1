"""Colours of a scene: a person's clothes, skin and hair (its left limbs a shade darker), and clutter's.
Shirts are picked to stand out from the background behind them and from the other people's shirts.
"""
from __future__ import annotations

import colorsys

import numpy as np

_LEFT_SHADE = 0.72  # left limbs are this much darker than right ones

SKIN_TONES = ((255, 224, 189), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 40))
HAIR_COLOURS = ((20, 20, 20), (60, 40, 20), (110, 70, 30), (200, 170, 90), (140, 140, 140))
TROUSER_COLOURS = ((30, 40, 90), (25, 25, 25), (90, 90, 95), (170, 150, 110), (60, 80, 140))


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _jitter(rng: np.random.Generator, colour: tuple[int, ...], amount: int = 12) -> tuple[int, int, int]:
    shifts = rng.integers(-amount, amount + 1, size=3)
    return tuple(min(255, max(0, int(c + d))) for c, d in zip(colour, shifts))


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(min(255, max(0, int(c * factor))) for c in colour)


def _colour_distance(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, float) - np.asarray(b, float)))


def _person_colours(rng: np.random.Generator, hue: float, local_bg: np.ndarray,
                    taken: list[tuple[int, int, int]]) -> dict[str, tuple[int, int, int]]:
    """A shirt of the given hue that stands out from the background behind it and from the other shirts."""
    best, best_score = None, -1.0
    for _ in range(6):
        candidate = _hsv(hue + rng.uniform(-0.04, 0.04), rng.uniform(0.55, 1.0), rng.uniform(0.45, 1.0))
        score = min([_colour_distance(candidate, local_bg)] + [_colour_distance(candidate, t) for t in taken])
        if score > best_score:
            best, best_score = candidate, score
    pants = (_jitter(rng, TROUSER_COLOURS[rng.integers(len(TROUSER_COLOURS))]) if rng.random() < 0.5
             else _hsv(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.8)))
    colours = {
        "shirt": best,
        "pants": pants,
        "skin": _jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))]),
        "hair": _jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]),
        "shoe": _jitter(rng, (40, 35, 30), 25),
        "eye": (15, 15, 20),
    }
    colours["nose"] = _shade(colours["skin"], 0.6)
    for role in ("shirt", "pants", "skin", "shoe"):
        colours[role + "_left"] = _shade(colours[role], _LEFT_SHADE)
    return colours


def _clutter_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return _hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.2, 0.95))

