"""Evaluation: COCO results files and COCOeval metrics for person key points and boxes.

`evaluate(gt, results)` returns every COCOeval stat by name (`keypoints/AP`, `bbox/AP`, ...).
"""
from pgnet.evaluation.coco_eval import (
    STAT_NAMES,
    evaluate,
    format_metrics_table,
    load_ground_truth,
    metric_names,
    write_metrics_json,
)
from pgnet.evaluation.results import load_results, results_from_detections

__all__ = [
    "STAT_NAMES",
    "evaluate",
    "format_metrics_table",
    "load_ground_truth",
    "load_results",
    "metric_names",
    "results_from_detections",
    "write_metrics_json",
]
