"""Synthetic COCO person key-point data: articulated figures on the 17-point skeleton, drawn on clutter.
The demo's and the tests' default data set, in the standard COCO layout, deterministic per seed."""
from __future__ import annotations

from pgnet.data.synthetic.scene import (
                                        HEIGHTS,
                                        MAX_PEOPLE,
                                        MIN_VISIBLE_KEYPOINTS,
                                        OCCLUDER_LABEL,
                                        PEOPLE,
                                        SyntheticImage,
                                        SyntheticPerson,
                                        render_synthetic_image,
)
from pgnet.data.synthetic.writer import (
                                        GENERATOR_VERSION,
                                        MARKER_NAME,
                                        MAX_IMAGES,
                                        check_crowd,
                                        image_id,
                                        scene_suffix,
                                        split_code,
                                        write_synthetic_coco,
                                        write_synthetic_dataset,
)

__all__ = [
    "GENERATOR_VERSION", "HEIGHTS", "MARKER_NAME", "MAX_IMAGES", "MAX_PEOPLE", "MIN_VISIBLE_KEYPOINTS",
    "OCCLUDER_LABEL", "PEOPLE", "SyntheticImage", "SyntheticPerson", "check_crowd", "image_id",
    "render_synthetic_image", "scene_suffix", "split_code", "write_synthetic_coco", "write_synthetic_dataset",
]
