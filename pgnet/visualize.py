"""Pictures for people: detections drawn on images (boxes, key points, COCO skeleton) and loss curves.

PIL draws the images; plots use matplotlib's Agg canvas directly (no display, no pyplot state).
"""
from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont, ImageOps

from pgnet.data.skeleton import KEYPOINT_NAMES, NUM_KEYPOINTS, SKELETON

log = logging.getLogger(__name__)

SIDE_COLORS = {"left": (30, 144, 255), "right": (255, 140, 0), "centre": (50, 205, 50)}
BOX_COLOR = (255, 0, 200)
TILE_BACKGROUND = (32, 32, 32)
REFERENCE_SIZE = 640  # line widths and fonts are sized for an image this large


def draw_people(
    image: Image.Image,
    people: Sequence[dict],
    score_threshold: float = 0.3,
    kp_threshold: float = 0.2,
) -> Image.Image:
    """A copy of `image` with each person's box, score, key points and skeleton drawn.

    `people` are COCO result dicts (`bbox` xywh, `keypoints` x, y, score x 17, `score`) or COCO
    ground-truth annotations (visibility flags 0/1/2 act as key-point scores, no score: 1).
    People below `score_threshold` and key points below `kp_threshold` are not drawn. Left limbs
    are blue, right orange, the rest green.
    """
    out = image.convert("RGB")  # always a new image, the input stays untouched
    draw = ImageDraw.Draw(out)
    scale = max(out.size) / REFERENCE_SIZE
    line = max(1, round(2 * scale))
    radius = max(2, round(3 * scale))
    font = ImageFont.load_default(size=max(10, round(14 * scale)))
    shown = [p for p in people if float(p.get("score", 1.0)) >= score_threshold]
    for person in sorted(shown, key=lambda p: float(p.get("score", 1.0))):  # best drawn last, on top
        if person.get("bbox") is not None:
            _draw_box(draw, person, line, font)
        if person.get("keypoints") is not None:
            _draw_skeleton(draw, _keypoint_array(person["keypoints"]), kp_threshold, line, radius)
    return out


def predictions_grid(
    images_with_people: Sequence[tuple[Image.Image, Sequence[dict]]],
    path: str | Path,
    cols: int = 4,
    tile_size: int = 320,
    score_threshold: float = 0.3,
    kp_threshold: float = 0.2,
) -> Path:
    """Draw each (image, people) pair, fit it into a square tile and write the grid as a PNG."""
    if not images_with_people:
        raise ValueError("predictions_grid needs at least one (image, people) pair")
    if cols < 1 or tile_size < 1:
        raise ValueError(f"cols and tile_size must be positive, got cols={cols}, tile_size={tile_size}")
    cols = min(cols, len(images_with_people))
    rows = math.ceil(len(images_with_people) / cols)
    grid = Image.new("RGB", (cols * tile_size, rows * tile_size), TILE_BACKGROUND)
    for i, (image, people) in enumerate(images_with_people):
        drawn = draw_people(image, people, score_threshold, kp_threshold)
        tile = ImageOps.contain(drawn, (tile_size, tile_size))
        x = (i % cols) * tile_size + (tile_size - tile.width) // 2
        y = (i // cols) * tile_size + (tile_size - tile.height) // 2
        grid.paste(tile, (x, y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")
    return path


def plot_loss_curves(records: Sequence[dict], path: str | Path, title: str | None = None) -> Path:
    """Write `loss_curves_figure(records, title)` as a PNG."""
    fig = loss_curves_figure(records, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def loss_curves_figure(records: Sequence[dict], title: str | None = None) -> Figure:
    """Every `loss*` key of `metrics.jsonl`-style records against `step`, as a matplotlib Figure.

    The total `loss` is drawn thicker; the y axis is logarithmic when every value is positive.
    If the records carry `lr`, it gets a second panel. A record without `step` uses its index;
    missing and non-finite values are left out (the latter counted in a logged warning).
    """
    curves = _loss_curves(records)
    if not curves:
        raise ValueError("no key starting with 'loss' in the records; pass metrics.jsonl records of training steps")
    lr_steps, lr_values = _curve(records, "lr")
    fig = Figure(figsize=(8, 6.5 if lr_steps else 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(2 if lr_steps else 1, 1, 1)
    for name, (steps, values) in curves.items():
        total = name == "loss"
        ax.plot(steps, values, label=name, linewidth=2.2 if total else 1.2, color="black" if total else None)
    if all(v > 0 for _, values in curves.values() for v in values):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    ax.set_title(title or "Training losses")
    if lr_steps:
        ax_lr = fig.add_subplot(2, 1, 2, sharex=ax)
        ax_lr.plot(lr_steps, lr_values, color="tab:purple", label="lr")
        ax_lr.set_xlabel("step")
        ax_lr.set_ylabel("learning rate")
        ax_lr.grid(True, alpha=0.3)
    return fig


def _side(name: str) -> str:
    return "left" if name.startswith("left_") else "right" if name.startswith("right_") else "centre"


def _limb_color(a: int, b: int) -> tuple[int, int, int]:
    side_a, side_b = _side(KEYPOINT_NAMES[a]), _side(KEYPOINT_NAMES[b])
    return SIDE_COLORS[side_a if side_a == side_b else "centre"]


def _keypoint_array(keypoints: Any) -> np.ndarray:
    arr = np.asarray(keypoints, dtype=np.float64).reshape(-1)
    if arr.size != 3 * NUM_KEYPOINTS:
        raise ValueError(f"keypoints must be {3 * NUM_KEYPOINTS} numbers (x, y, score x {NUM_KEYPOINTS}), got {arr.size}")
    return arr.reshape(NUM_KEYPOINTS, 3)


def _draw_box(draw: ImageDraw.ImageDraw, person: dict, line: int, font: ImageFont.ImageFont) -> None:
    x, y, w, h = (float(v) for v in person["bbox"])
    draw.rectangle((x, y, x + w, y + h), outline=BOX_COLOR, width=line)
    if "score" in person:
        label = f"{float(person['score']):.2f}"
        left, top, right, bottom = draw.textbbox((x, y), label, font=font)
        ty = max(0.0, y - (bottom - top) - 2 * line)  # above the box, inside the image
        draw.rectangle((x, ty, x + (right - left) + 2 * line, ty + (bottom - top) + 2 * line), fill=BOX_COLOR)
        draw.text((x + line, ty + line - (top - y)), label, fill=(255, 255, 255), font=font)


def _draw_skeleton(draw: ImageDraw.ImageDraw, kps: np.ndarray, kp_threshold: float, line: int, radius: int) -> None:
    visible = kps[:, 2] >= kp_threshold
    for a, b in SKELETON:
        if visible[a] and visible[b]:
            draw.line((*kps[a, :2], *kps[b, :2]), fill=_limb_color(a, b), width=line)
    for j in np.flatnonzero(visible):
        x, y = kps[j, :2]
        color = SIDE_COLORS[_side(KEYPOINT_NAMES[j])]
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color, outline=(255, 255, 255))


def _loss_curves(records: Sequence[dict]) -> dict[str, tuple[list[float], list[float]]]:
    names = sorted({k for r in records for k in r if k.startswith("loss")}, key=lambda k: (k != "loss", k))
    curves = {name: _curve(records, name) for name in names}
    return {name: c for name, c in curves.items() if c[0]}


def _curve(records: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one key over the records, leaving out missing and non-finite values."""
    steps, values, skipped = [], [], 0
    for i, record in enumerate(records):
        value = record.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            skipped += 1
            continue
        steps.append(float(record.get("step", i)))
        values.append(float(value))
    if skipped:
        log.warning("plot_loss_curves: %d non-finite or non-numeric %r value(s) left out", skipped, key)
    return steps, values
