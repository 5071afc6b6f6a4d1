"""Geometric and photometric augmentation: one affine warp (letterbox, scale, rotation, shift, flip) and colour jitter.

Points use continuous pixel coordinates (pixel i covers [i, i+1)), the convention of PIL's warps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pgnet.config import AugmentConfig
from pgnet.data.skeleton import FLIP_INDEX

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class AffineParams:
    """One random draw of the geometric augmentation, on top of the letterbox fit."""

    scale: float = 1.0  # zoom relative to "whole image fits the input"
    rotation: float = 0.0  # degrees, counter-clockwise on screen
    shift: tuple[float, float] = (0.0, 0.0)  # (dx, dy) in input pixels
    flip: bool = False  # mirror horizontally (left/right key points swap)


def random_affine_params(rng: np.random.Generator, aug: AugmentConfig, input_size: tuple[int, int]) -> AffineParams:
    """Draw scale, rotation, shift and flip from `aug`'s ranges (always the same number of draws)."""
    in_h, in_w = input_size
    scale = rng.uniform(*aug.scale)
    rotation = rng.uniform(-aug.rotate, aug.rotate)
    shift = rng.uniform(-aug.translate, aug.translate, size=2) * (in_w, in_h)
    flip = bool(rng.random() < aug.flip)
    return AffineParams(float(scale), float(rotation), (float(shift[0]), float(shift[1])), flip)


def affine_matrix(image_size: tuple[int, int], input_size: tuple[int, int],
                  params: AffineParams = AffineParams()) -> np.ndarray:
    """(3, 3) matrix from image pixels to input pixels.

    With default `params` it is the evaluation letterbox: the whole image scaled to fit the
    input, aspect ratio kept, centred. Augmentation scales and rotates about the input's centre,
    shifts, and mirrors the result (x -> input_w - x).
    """
    h, w = image_size
    in_h, in_w = input_size
    fit = min(in_w / w, in_h / h) * params.scale
    angle = math.radians(params.rotation)
    cos, sin = math.cos(angle) * fit, math.sin(angle) * fit
    to_origin = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]], np.float64)
    rotate_scale = np.array([[cos, sin, 0], [-sin, cos, 0], [0, 0, 1]], np.float64)
    to_input = np.array([[1, 0, in_w / 2 + params.shift[0]], [0, 1, in_h / 2 + params.shift[1]], [0, 0, 1]])
    matrix = to_input @ rotate_scale @ to_origin
    if params.flip:
        matrix = np.array([[-1, 0, in_w], [0, 1, 0], [0, 0, 1]], np.float64) @ matrix
    return matrix


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """(2, 3) inverse of a (3, 3) or (2, 3) affine matrix."""
    m = np.asarray(matrix, np.float64)
    full = np.vstack([m[:2], [0, 0, 1]])
    return np.linalg.inv(full)[:2]


def warp_image(image: Image.Image, matrix: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """The (H, W, 3) uint8 input image: `image` warped by `matrix` (image -> input pixels), bilinear.

    A strong downscale first box-averages the image by an integer factor (PIL `reduce`), so a
    large photo shrunk to a small input is not aliased; black fills what lies outside the image.
    """
    in_h, in_w = input_size
    matrix = np.asarray(matrix, np.float64)
    zoom = math.sqrt(abs(np.linalg.det(matrix[:2, :2])))
    factor = int(1 / zoom) if zoom > 0 else 1
    if factor >= 2:
        image = image.reduce(factor)  # reduced pixel i covers original [f*i, f*(i+1))
        matrix = matrix @ np.diag([factor, factor, 1.0])
    inverse = invert_affine(matrix)  # PIL maps each output pixel back to the source
    warped = image.transform((in_w, in_h), Image.Transform.AFFINE, tuple(inverse.reshape(-1)),
                             resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    return np.asarray(warped, np.uint8)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(..., 2) points mapped by a (3, 3) or (2, 3) affine matrix."""
    m = np.asarray(matrix, np.float64)
    return np.asarray(points, np.float64) @ m[:2, :2].T + m[:2, 2]


def transform_boxes(boxes_xyxy: np.ndarray, matrix: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """(N, 4) boxes mapped by their 4 corners, enclosed and clipped to the input; float32."""
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    corners = transform_points(boxes[:, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 4, 2), matrix)
    out = np.concatenate([corners.min(1), corners.max(1)], axis=1)
    in_h, in_w = input_size
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, in_w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, in_h)
    return out.astype(np.float32)


def transform_keypoints(keypoints: np.ndarray, matrix: np.ndarray, flip: bool) -> np.ndarray:
    """(N, 17, 3) key points mapped by `matrix`; unlabelled ones (v = 0) stay (0, 0, 0).

    When the matrix mirrors the image (`flip`), a left joint lands where the right one was
    seen, so joints are swapped with FLIP_INDEX: the mirrored left wrist becomes the right wrist.
    """
    kps = np.asarray(keypoints, np.float64).reshape(-1, len(FLIP_INDEX), 3).copy()
    labelled = kps[..., 2] > 0
    kps[..., :2] = np.where(labelled[..., None], transform_points(kps[..., :2], matrix), 0)
    if flip:
        kps = kps[:, list(FLIP_INDEX)]
    return kps.astype(np.float32)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation jitter in random order on an (H, W, 3) float image in [0, 1].

    Each factor is 1 + U(-strength, strength); the result is clipped to [0, 1].
    """
    order = rng.permutation(3)
    factors = 1 + rng.uniform(-strength, strength, size=3)
    gray_weights = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma
    out = image.astype(np.float32, copy=True)  # then changed in place
    for op in order:
        alpha = np.float32(factors[op])
        if op == 0:  # brightness
            out *= alpha
        elif op == 1:  # contrast: blend with the mean grey level
            grey = (1 - alpha) * float((out @ gray_weights).mean())
            out *= alpha
            out += grey
        else:  # saturation: blend with each pixel's grey
            grey = (1 - alpha) * (out @ gray_weights)[..., None]
            out *= alpha
            out += grey
    return np.clip(out, 0, 1, out=out)


def normalize_image(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 or [0, 1] float image -> (3, H, W) float32 with ImageNet mean/std."""
    img = image.astype(np.float32)  # a copy, then changed in place
    if image.dtype == np.uint8:
        img /= 255
    img -= IMAGENET_MEAN
    img /= IMAGENET_STD
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def denormalize_image(image: np.ndarray) -> np.ndarray:
    """Inverse of `normalize_image`: (3, H, W) -> (H, W, 3) uint8, for visualisation."""
    img = np.asarray(image, np.float32).transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return (img.clip(0, 1) * 255 + 0.5).astype(np.uint8)
