"""What a finished run leaves in MLflow: its config, logs and plots (loss curves, people drawn) as artifacts, and
its best checkpoint as an MLflow model (`pipelines.tracking.models`), uploaded once, with the model."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from pgnet.run.layout import (
    BALANCE_FILE,
    CONFIG_FILE,
    EVALUATIONS_FILE,
    METRICS_FILE,
    RunDir,
)
from pgnet.run.metrics_log import read_jsonl
from pipelines.tracking.models import log_best_model

PREDICTION_IMAGES = 8  # validation images drawn with the best evaluation's people


def log_run_artifacts(client: MlflowClient, run_id: str, run_dir: Path) -> None:
    """Upload the run directory's config, logs, stage balance and plots; log its best checkpoint as a model."""
    files = RunDir(run_dir)
    for name in (CONFIG_FILE, METRICS_FILE, EVALUATIONS_FILE, BALANCE_FILE):
        if (files / name).exists():
            client.log_artifact(run_id, str(files / name))
    with tempfile.TemporaryDirectory() as tmp:
        for png in render_run_pngs(run_dir, Path(tmp)):
            client.log_artifact(run_id, str(png), artifact_path="plots")
    log_best_model(client, run_id, Path(run_dir))


def render_run_pngs(run_dir: Path, out_dir: Path) -> list[Path]:
    """The loss curves and the best evaluation's people drawn on validation images, as PNGs."""
    from pgnet.visualize import plot_loss_curves
    written = []
    records = read_jsonl(RunDir(run_dir).metrics)
    if records:
        written.append(plot_loss_curves(records, out_dir / "loss_curves.png", title=run_dir.name))
    grid = render_predictions_png(run_dir, out_dir / "val_predictions.png")
    if grid is not None:
        written.append(grid)
    return written


def render_predictions_png(run_dir: Path, path: Path, score_threshold: float = 0.3) -> Path | None:
    """Draw the best evaluation's predictions (`val_predictions_best.json`) scored `score_threshold` or more on
    the first validation images."""
    from PIL import Image

    from pgnet.data.dataset import coco_paths
    from pgnet.data.records import load_coco_records
    from pgnet.data.source import resolve_data_root
    from pgnet.visualize import predictions_grid

    files = RunDir(run_dir)
    predictions = files.best_predictions
    if not predictions.exists() or not files.config.exists():
        return None
    cfg = files.read_config()
    results = json.loads(predictions.read_text())
    ann_file, image_dir = coco_paths(resolve_data_root(cfg.data, progress=False), cfg.data.val_split)
    records, _ = load_coco_records(ann_file, image_dir)
    pairs = []
    for record in records[:PREDICTION_IMAGES]:
        people = [r for r in results if r["image_id"] == record.image_id]
        with Image.open(record.file) as img:
            pairs.append((img.convert("RGB"), people))
    return predictions_grid(pairs, path, cols=4, score_threshold=score_threshold) if pairs else None


