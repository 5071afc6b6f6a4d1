"""Data: COCO person key-point records, augmentation, samples and the torch Dataset, plus the synthetic set.

`make_sample` is the pure per-image function that both the DataLoader and Ray Data call.
"""
from pgnet.data.dataset import CocoKeypoints, coco_paths, collate_samples
from pgnet.data.records import ImageRecord, load_coco_records
from pgnet.data.sample import META_KEYS, BadSample, make_sample, read_image, sample_rng
from pgnet.data.skeleton import (
    FLIP_INDEX,
    FLIP_PAIRS,
    KEYPOINT_NAMES,
    NUM_KEYPOINTS,
    OKS_SIGMAS,
    PERSON_CATEGORY,
    SKELETON,
)
from pgnet.data.synthetic import write_synthetic_coco
from pgnet.data.transforms import (
    AffineParams,
    affine_matrix,
    denormalize_image,
    invert_affine,
    random_affine_params,
)

__all__ = [
    "AffineParams", "BadSample", "CocoKeypoints", "FLIP_INDEX", "FLIP_PAIRS", "ImageRecord",
    "KEYPOINT_NAMES", "META_KEYS", "NUM_KEYPOINTS", "OKS_SIGMAS", "PERSON_CATEGORY", "SKELETON",
    "affine_matrix", "coco_paths", "collate_samples", "denormalize_image", "invert_affine",
    "load_coco_records", "make_sample", "random_affine_params", "read_image", "sample_rng",
    "write_synthetic_coco",
]
