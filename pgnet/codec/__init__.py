"""Target codec of CenterNet multi-pose: encode ground truth into training targets, decode outputs into people.

See DEVELOPERS.md ("Training targets", "Model outputs") for the dict contracts.
"""
from pgnet.codec.decode import (
    coco_results,
    decode_outputs,
    detections_to_coco,
    flip_merge,
    heatmap_nms,
    peak_positions,
    to_image_coords,
)
from pgnet.codec.gaussian import (
    draw_gaussian,
    gaussian_2d,
    gaussian_radius,
    heatmap_radius,
)
from pgnet.codec.targets import (
    NUM_JOINTS,
    STRIDE,
    TARGET_KEYS,
    empty_targets,
    encode_targets,
    oracle_outputs,
    output_size,
)

__all__ = [
    "NUM_JOINTS", "STRIDE", "TARGET_KEYS",
    "coco_results", "decode_outputs", "detections_to_coco", "draw_gaussian", "empty_targets",
    "encode_targets", "flip_merge", "gaussian_2d", "gaussian_radius", "heatmap_nms", "heatmap_radius",
    "oracle_outputs", "output_size", "peak_positions", "to_image_coords",
]
