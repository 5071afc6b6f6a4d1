"""The MLflow run that another process streams into, named without importing MLflow.

A pipeline's rank 0 gets one in its plan; the workers that do not track never load MLflow.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrackingTarget:
    uri: str  # the tracking store's URI
    run_id: str
