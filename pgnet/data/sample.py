"""One training/evaluation sample from one record: read, warp, jitter, normalise, encode targets.

A pure function of its arguments: randomness comes only from (seed, epoch, image_id), so any sharding reproduces it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from pgnet.codec.targets import STRIDE, encode_targets
from pgnet.config import AugmentConfig
from pgnet.data.records import ImageRecord
from pgnet.data.transforms import (
    AffineParams,
    affine_matrix,
    color_jitter,
    invert_affine,
    normalize_image,
    random_affine_params,
    transform_boxes,
    transform_keypoints,
    warp_image,
    xywh_to_xyxy,
)

META_KEYS = ("image_id", "inv_affine", "orig_size", "flipped")


class BadSample(Exception):
    """An image that cannot be used (missing, unreadable, not matching its annotation)."""

    def __init__(self, path: str, reason: str):
        super().__init__(path, reason)  # args stay (path, reason): the exception pickles across processes
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def sample_rng(seed: int, epoch: int, image_id: int) -> np.random.Generator:
    """The only source of randomness of a sample: independent of order, worker and shard."""
    return np.random.default_rng([int(seed), int(epoch), int(image_id)])


def read_image(path: str, expected_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image file to RGB; BadSample if it is missing, corrupt or not the annotated (h, w)."""
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except FileNotFoundError:
        raise BadSample(path, "image file not found (is the split's image folder complete?)") from None
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as err:
        raise BadSample(path, f"cannot decode the image ({type(err).__name__}: {err})") from None
    if expected_size is not None and (rgb.height, rgb.width) != tuple(expected_size):
        raise BadSample(path, f"image is {rgb.height}x{rgb.width} but the annotations say "
                              f"{expected_size[0]}x{expected_size[1]}")
    return rgb


def make_sample(record: ImageRecord | Mapping[str, Any], *, input_size: tuple[int, int], max_people: int,
                augment: AugmentConfig | None, seed: int, epoch: int, train: bool,
                stride: int = STRIDE, image: Image.Image | None = None) -> dict[str, np.ndarray]:
    """The network input, targets (DEVELOPERS.md) and meta of one image, as numpy arrays.

    Training with `augment` draws scale, rotation, shift, flip and colour jitter from
    `sample_rng(seed, epoch, image_id)`; otherwise (or with `train=False`) the whole image is
    letterboxed into `input_size` (h, w). Meta: `image_id` (int64), `inv_affine` (2, 3)
    input -> image pixels, `orig_size` (h, w), `flipped` (bool). `image` is `record.file` already
    decoded by `read_image` (`data.cache: ram`); without it the file is read. Raises BadSample.
    """
    if not isinstance(record, ImageRecord):
        record = ImageRecord.from_dict(record)
    input_size = (int(input_size[0]), int(input_size[1]))
    rng = sample_rng(seed, epoch, record.image_id)
    augmenting = train and augment is not None
    params = random_affine_params(rng, augment, input_size) if augmenting else AffineParams()
    matrix = affine_matrix((record.height, record.width), input_size, params)

    if image is None:
        image = read_image(record.file, (record.height, record.width))
    pixels = warp_image(image, matrix, input_size)
    if augmenting and augment.color > 0:
        pixels = color_jitter(pixels.astype(np.float32) / 255, rng, augment.color)
    sample = {"image": normalize_image(pixels)}

    boxes = transform_boxes(xywh_to_xyxy(record.boxes), matrix, input_size)
    keypoints = transform_keypoints(record.keypoints, matrix, params.flip)
    crowd = transform_boxes(xywh_to_xyxy(record.crowd_boxes), matrix, input_size)
    sample.update(encode_targets(boxes, keypoints, crowd, input_size, max_people, stride))
    sample.update({
        "image_id": np.asarray(record.image_id, np.int64),
        "inv_affine": invert_affine(matrix).astype(np.float32),
        "orig_size": np.asarray([record.height, record.width], np.int64),
        "flipped": np.asarray(params.flip, np.bool_),
    })
    return sample
