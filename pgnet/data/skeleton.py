"""The COCO person key-point definition: names, limbs, left/right pairs and OKS sigmas.

One place for the 17-point skeleton shared by the codec, augmentations, evaluation and synthetic data.
"""
from __future__ import annotations

from typing import Any

NUM_KEYPOINTS = 17

# COCO order (person_keypoints_*.json, categories[0]["keypoints"]).
KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye", "right_eye",
    "left_ear", "right_ear",
    "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow",
    "left_wrist", "right_wrist",
    "left_hip", "right_hip",
    "left_knee", "right_knee",
    "left_ankle", "right_ankle",
)

# COCO's 19 limbs, 0-based (the JSON's `skeleton` is the same list, 1-based).
SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12),
    (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2),
    (1, 3), (2, 4), (3, 5), (4, 6),
)

# (left, right) index pairs: a horizontal flip swaps each pair.
FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16),
)


def _flip_index() -> tuple[int, ...]:
    order = list(range(NUM_KEYPOINTS))
    for left, right in FLIP_PAIRS:
        order[left], order[right] = right, left
    return tuple(order)


# keypoints_flipped = keypoints[FLIP_INDEX] after mirroring x: the person's left stays "left".
FLIP_INDEX: tuple[int, ...] = _flip_index()

# Per-key-point OKS sigmas, exactly as pycocotools' COCOeval (kpt_oks_sigmas).
OKS_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)

# The `categories` entry of COCO's person_keypoints_*.json (1-based skeleton).
# Treat it as read-only; copy it (`copy.deepcopy`) before changing anything.
PERSON_CATEGORY: dict[str, Any] = {
    "supercategory": "person",
    "id": 1,
    "name": "person",
    "keypoints": list(KEYPOINT_NAMES),
    "skeleton": [[a + 1, b + 1] for a, b in SKELETON],
}

__all__ = [
    "NUM_KEYPOINTS", "KEYPOINT_NAMES", "SKELETON", "FLIP_PAIRS", "FLIP_INDEX",
    "OKS_SIGMAS", "PERSON_CATEGORY",
]
