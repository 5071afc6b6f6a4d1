"""One synthetic image: a clutter background, posed people and occluders drawn in front of each other,
its label map and each drawn person's key points, visibility flags and box.

Scene model (per image, all drawn with PIL, nothing anti-aliased):
- background: a gradient between two muted colours, low-frequency colour noise and 4-13 clutter
  shapes (boxes, ellipses, polygons, outlines, limb-like thick lines);
- 1-5 people (`people`), later ones drawn in front of earlier ones. Each is a kinematic figure: torso
  (filled), neck, head with hair, eyes and nose, two-segment arms with hands and legs with feet,
  random build, lean, facing (yaw: front, profile or back), joint angles, rotation and scale
  (standing height 25-90% of the image height, `heights`; crowded scenes cap it). The figure's own left limbs are drawn a shade
  darker than its right ones: together with the face this keeps left/right learnable at 128 px
  (a cue that a mirrored image reverses: horizontal-flip augmentation contradicts it);
- sometimes 1-2 foreground occluders (boxes, poles, ellipses) over a person;
- mild sensor noise, then JPEG at quality 95 without chroma subsampling.

Labels, as COCO: a key point outside the image is `v=0` with `x=y=0`; one covered by anything
drawn in front of it (a later person, an occluder) or on the far side of its own head (a face
point of someone seen from the back, the far eye and ear in profile) is `v=1`; else `v=2`.
Covering by the figure's own limbs counts as visible. Coordinates are pixel indices as in COCO
(pixel i is centred on coordinate i); every drawn joint covers its key point's pixel. `bbox` and `area` come from the person's
visible pixel mask (as COCO's segmentation), `segmentation` is that bbox as a polygon.
A planned person with fewer than `MIN_VISIBLE_KEYPOINTS` visible key points is not drawn at all
(so every drawn person is annotated), and every image keeps at least one person.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from pgnet.data.skeleton import NUM_KEYPOINTS
from pgnet.data.synthetic.colours import _clutter_colour, _hsv, _person_colours
from pgnet.data.synthetic.figure import _Figure, _sample_figure
from pgnet.data.synthetic.parts import Part, _disc, _draw_parts, _parts_box, _poly

MIN_VISIBLE_KEYPOINTS = 4
MAX_PEOPLE = 5
PEOPLE = (1, MAX_PEOPLE)  # people per image, uniform
HEIGHTS = (0.25, 0.9)  # a person's standing height as a fraction of the image height, uniform
OCCLUDER_LABEL = 255


# ------------------------------------------------------------------ public results

@dataclass
class SyntheticPerson:
    """One annotated person of a rendered image."""

    keypoints: np.ndarray  # (17, 2) float, image pixels (pixel index = coordinate), also outside the image
    visibility: np.ndarray  # (17,) int, COCO flags 0 / 1 / 2
    bbox: tuple[int, int, int, int]  # x, y, w, h of the visible mask
    area: int  # visible pixels
    label: int  # value of this person's pixels in `SyntheticImage.labels`


@dataclass
class SyntheticImage:
    """A rendered scene before JPEG: the picture and what each pixel shows."""

    image: Image.Image  # RGB
    background: np.ndarray  # (H, W, 3) uint8: the clutter background alone, before people and noise
    labels: np.ndarray  # (H, W) uint8: 0 background, person label, OCCLUDER_LABEL
    people: list[SyntheticPerson] = field(default_factory=list)
    dropped: int = 0  # planned people not drawn: fewer than MIN_VISIBLE_KEYPOINTS visible


# ------------------------------------------------------------------ background and occluders

def _background(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """Gradient + low-frequency colour noise + clutter shapes (some of them limb-like lines)."""
    # A linear gradient plus colour blobs on a coarse grid; bilinear upsampling keeps the gradient
    # linear and turns the blobs into smooth low-frequency noise, at the cost of one resize.
    c0 = np.array(_hsv(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.3, 0.9)), np.float64)
    c1 = np.array(_hsv(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.3, 0.9)), np.float64)
    angle = rng.uniform(0.0, 2 * math.pi)
    grid = int(rng.integers(3, 7))
    axis = np.linspace(0.0, 1.0, grid)
    ramp = axis[None, :] * math.cos(angle) + axis[:, None] * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    coarse = c0 + (c1 - c0) * ramp[..., None] + rng.normal(0.0, 22.0, (grid, grid, 3))
    coarse = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8))
    # align_corners-style sampling: the coarse grid's corner pixels land on the image's corners
    image = coarse.resize((width, height), Image.BILINEAR, box=(0.5, 0.5, grid - 0.5, grid - 0.5))

    draw = ImageDraw.Draw(image)
    side = min(height, width)
    for _ in range(int(rng.integers(4, 14))):
        kind = rng.integers(5)
        colour = _clutter_colour(rng)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(0.05, 0.4, size=2) * side
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        if kind == 0:
            draw.rectangle(box, fill=colour)
        elif kind == 1:
            draw.ellipse(box, fill=colour)
        elif kind == 2:
            n = int(rng.integers(3, 7))
            pts = np.stack([rng.uniform(box[0], box[2], n), rng.uniform(box[1], box[3], n)], axis=1)
            draw.polygon([tuple(p) for p in pts], fill=colour)
        elif kind == 3:
            draw.rectangle(box, outline=colour, width=int(rng.integers(1, 5)))
        else:  # limb-like: one or two thick connected segments
            pts = [(cx, cy)]
            for _ in range(int(rng.integers(1, 3))):
                a = rng.uniform(0, 2 * math.pi)
                length = rng.uniform(0.06, 0.2) * side
                pts.append((pts[-1][0] + length * math.cos(a), pts[-1][1] + length * math.sin(a)))
            draw.line(pts, fill=colour, width=int(rng.integers(2, max(3, int(0.03 * side)))), joint="curve")
    return image


def _occluder(rng: np.random.Generator, around: np.ndarray, person_height: float) -> list[Part]:
    """A foreground object (box, pole, ellipse, polygon) over a point of a person's box."""
    x0, y0, x1, y1 = around
    centre = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
    size = person_height * rng.uniform(0.15, 0.45)
    kind = rng.integers(4)
    if kind == 1:  # pole
        w, h = size * rng.uniform(0.12, 0.25), size * rng.uniform(1.5, 3.0)
    else:
        w, h = size * rng.uniform(0.6, 1.4), size * rng.uniform(0.6, 1.4)
    if kind == 2:
        return [_disc(centre, (w + h) / 4, "occluder")]
    if kind == 3:
        n = int(rng.integers(3, 7))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = rng.uniform(0.3, 0.6, n) * (w + h) / 2
        return [_poly(centre + np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1), "occluder")]
    a = rng.uniform(-0.3, 0.3)
    c, s = math.cos(a), math.sin(a)
    corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    return [_poly(centre + corners @ np.array([[c, s], [-s, c]]), "occluder")]


# ------------------------------------------------------------------ scenes

def _sensor_noise(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """Uniform grey-level noise of +-amp (1..5) on every channel; random bytes keep it cheap."""
    amp = int(rng.integers(1, 6))
    width, height = image.size
    raw = np.frombuffer(rng.bytes(width * height), np.uint8).reshape(height, width).astype(np.uint16)
    noise = Image.fromarray(((raw * (2 * amp + 1)) >> 8).astype(np.uint8)).convert("RGB")  # 0..2*amp
    return ImageChops.add(image, noise, scale=1.0, offset=-amp)


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _place(rng: np.random.Generator, figure: _Figure, height: int, width: int,
           others: list[np.ndarray]) -> _Figure:
    """Rotate the figure and put it mostly inside the image, overlapping earlier people only a little."""
    u = rng.random()
    rotation = float(np.clip(rng.normal(0.0, 0.1), -0.3, 0.3)) if u < 0.88 else rng.uniform(-1.4, 1.4)
    figure = figure.moved(rotation, np.zeros(2))
    box = _parts_box(figure.parts)
    bw, bh = box[2] - box[0], box[3] - box[1]
    best, best_score = None, -np.inf
    for _ in range(8):
        # At least ~75% of the box inside along each axis, where the box fits at all.
        x0 = rng.uniform(-0.25 * bw, max(-0.25 * bw, width - 0.75 * bw))
        y0 = rng.uniform(-0.25 * bh, max(-0.25 * bh, height - 0.75 * bh))
        offset = np.array([x0, y0]) - box[:2]
        moved = box + np.tile(offset, 2)
        overlap = max([_box_iou(moved, o) for o in others], default=0.0)
        score = -max(0.0, overlap - 0.3)
        if score > best_score:
            best, best_score = offset, score
        if overlap <= 0.3:
            break
    return figure.moved(0.0, best)


def _inside(points: np.ndarray, height: int, width: int) -> np.ndarray:
    return (points[:, 0] >= 0) & (points[:, 0] <= width - 1) & (points[:, 1] >= 0) & (points[:, 1] <= height - 1)


def _visibility(figure: _Figure, label: int, labels: np.ndarray) -> np.ndarray:
    """COCO flags from the label map: 0 outside, 1 covered (or behind its own head), 2 seen."""
    h, w = labels.shape
    inside = _inside(figure.keypoints, h, w)
    vis = np.zeros(NUM_KEYPOINTS, dtype=np.int64)
    pix = np.floor(figure.keypoints + 0.5).astype(np.int64)
    for j in np.flatnonzero(inside):
        seen = labels[pix[j, 1], pix[j, 0]] == label and not figure.self_hidden[j]
        vis[j] = 2 if seen else 1
    return vis


def _label_map(height: int, width: int, figures: list[_Figure], keep: list[bool],
               occluders: list[list[Part]]) -> np.ndarray:
    labels = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(labels)
    for i, figure in enumerate(figures):
        if keep[i]:
            _draw_parts(draw, figure.parts, lambda role, v=i + 1: v)
    for parts in occluders:
        _draw_parts(draw, parts, lambda role: OCCLUDER_LABEL)
    return np.asarray(labels)


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """COCO x, y, w, h of a mask's pixels (pixel i spans [i, i + 1))."""
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def _image_rngs(seed: int, split: str, index: int) -> list[np.random.Generator]:
    sequence = np.random.SeedSequence([seed, zlib.crc32(split.encode()), index])
    return [np.random.default_rng(s) for s in sequence.spawn(3)]


def _plan_people(rng: np.random.Generator, height: int, width: int, background: np.ndarray,
                 people: tuple[int, int] = PEOPLE,
                 heights: tuple[float, float] = HEIGHTS) -> tuple[list[_Figure], list[list[Part]]]:
    count = int(rng.integers(people[0], people[1] + 1))
    low, high = heights
    top = min(high, {1: 0.9, 2: 0.85, 3: 0.75}.get(count, 0.6))  # crowded scenes hold smaller people
    top = max(top, low)
    hue0 = rng.random()
    figures: list[_Figure] = []
    boxes: list[np.ndarray] = []
    for i in range(count):
        figure = _sample_figure(rng, height * rng.uniform(low, top))
        figure = _place(rng, figure, height, width, boxes)
        box = _parts_box(figure.parts)
        x0, y0 = np.clip(box[:2].astype(int), 0, [width - 1, height - 1])
        x1, y1 = np.clip(np.ceil(box[2:]).astype(int), [x0 + 1, y0 + 1], [width, height])
        local_bg = background[y0:y1, x0:x1].reshape(-1, 3).mean(0)
        hue = hue0 + i / count + rng.uniform(-0.15, 0.15) / count  # distinct shirts within an image
        figure.colours = _person_colours(rng, hue, local_bg, [f.colours["shirt"] for f in figures])
        figures.append(figure)
        boxes.append(box)
    occluders: list[list[Part]] = []
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 3))):
            target = figures[int(rng.integers(len(figures)))]
            occluders.append(_occluder(rng, _parts_box(target.parts), target.height))
    return figures, occluders


def render_synthetic_image(seed: int, split: str, index: int, image_size: tuple[int, int] = (256, 256), *,
                           people: tuple[int, int] = PEOPLE, heights: tuple[float, float] = HEIGHTS) -> SyntheticImage:
    """Image `index` of `split` for `seed`: the picture (before JPEG), its label map and its people.

    `image_size` is (height, width). The same arguments always give the same scene.
    """
    height, width = image_size
    bg_rng, people_rng, noise_rng = _image_rngs(seed, split, index)
    background_image = _background(bg_rng, height, width)
    background = np.asarray(background_image)
    for _attempt in range(50):
        figures, occluders = _plan_people(people_rng, height, width, background, people, heights)
        keep = [True] * len(figures)
        labels = _label_map(height, width, figures, keep, occluders)
        visible = [int((_visibility(f, i + 1, labels) == 2).sum()) for i, f in enumerate(figures)]
        keep = [v >= MIN_VISIBLE_KEYPOINTS for v in visible]
        if any(keep):
            break
    else:  # pragma: no cover - 50 empty plans in a row would be a bug in the scene model
        raise RuntimeError(f"synthetic image {split}/{index} (seed {seed}): no person could be placed visibly")
    if not all(keep):
        # Removing people only uncovers the others, so everyone kept still has enough visible points.
        labels = _label_map(height, width, figures, keep, occluders)

    image = background_image.copy()
    draw = ImageDraw.Draw(image)
    for figure, kept in zip(figures, keep):
        if kept:
            _draw_parts(draw, figure.parts, figure.colours.__getitem__)
    for parts in occluders:
        colour = _hsv(people_rng.random(), people_rng.uniform(0.0, 0.8), people_rng.uniform(0.2, 0.95))
        _draw_parts(draw, parts, lambda role, c=colour: c)
    image = _sensor_noise(noise_rng, image)

    people = []
    for i, (figure, kept) in enumerate(zip(figures, keep)):
        if not kept:
            continue
        label = i + 1
        mask = labels == label
        people.append(SyntheticPerson(figure.keypoints.copy(), _visibility(figure, label, labels),
                                      _mask_box(mask), int(mask.sum()), label))
    return SyntheticImage(image, background, labels, people, dropped=len(figures) - len(people))
