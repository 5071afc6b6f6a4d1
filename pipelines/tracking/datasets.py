"""A run's training and validation data as MLflow dataset inputs (the runs table's Dataset column).

Each split is one MLflow `Dataset`: named `<data set>-<split>` (`synthetic-train2017`, `coco-val2017`),
its source the annotation file, its digest the file's SHA-256 (first 16 hex digits), its profile the
split, image, person and crowd-region counts and the whole SHA-256. Logged with the context tag
`mlflow.data.context` = train / validation when the run starts.

The counts are the COCO loader's (`pgnet.data.records.load_coco_records`: images, people with a usable
box, crowd regions), from one parse of the file; they are cached by the file's SHA-256 under
`~/.cache/pgnet/annotations/` (or `$PGNET_CACHE`), so the trials of a sweep after the first only hash it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient

from pgnet.atomic import write_json_atomic
from pgnet.config import Config

CONTEXT_TAG = "mlflow.data.context"  # mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT
DIGEST_CHARS = 16


@dataclass(frozen=True)
class AnnotationSummary:
    """What a COCO annotation file holds, as the loader counts it."""

    sha256: str
    images: int
    people: int
    crowd_regions: int


def cache_dir() -> Path:
    return Path(os.environ.get("PGNET_CACHE") or Path.home() / ".cache" / "pgnet") / "annotations"


def summarize_annotations(path: str | Path) -> AnnotationSummary:
    """The file's SHA-256 and the loader's image, person and crowd-region counts (cached by the digest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    sha256 = digest.hexdigest()
    cached = cache_dir() / f"{sha256}.json"
    if cached.is_file():
        with contextlib.suppress(ValueError, TypeError, KeyError):
            return AnnotationSummary(sha256, **{k: int(v) for k, v in json.loads(cached.read_text()).items()})
    from pgnet.data.records import load_coco_records
    _, counts = load_coco_records(path, Path(path).parent)
    summary = {"images": counts["images"], "people": counts["people"], "crowd_regions": counts["crowd_regions"]}
    with contextlib.suppress(OSError):  # a read-only home: no cache, same counts
        write_json_atomic(summary, cached)
    return AnnotationSummary(sha256, **summary)


def split_input(cfg: Config, root: Path, split: str, context: str) -> DatasetInput:
    """One split of the run's data as an MLflow dataset input with its context tag."""
    from pgnet.data.dataset import coco_paths
    ann_file, _ = coco_paths(root, split)
    summary = summarize_annotations(ann_file)
    profile = {"split": split, "images": summary.images, "people": summary.people,
               "crowd_regions": summary.crowd_regions, "annotation_sha256": summary.sha256}
    name = f"{'synthetic' if not cfg.data.root else Path(root).name}-{split}"
    dataset = Dataset(name=name, digest=summary.sha256[:DIGEST_CHARS], source_type="local",
                      source=json.dumps({"uri": str(Path(ann_file).absolute())}), profile=json.dumps(profile))
    return DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, context)])


def dataset_inputs(cfg: Config, progress: bool = False) -> list[DatasetInput]:
    """The run's training and validation splits as dataset inputs, computed here (no MLflow call); the synthetic
    set is written first when missing, as the trainer would."""
    from pgnet.data.source import resolve_data_root
    root = resolve_data_root(cfg.data, progress=progress)
    return [split_input(cfg, root, cfg.data.train_split, "train"),
            split_input(cfg, root, cfg.data.val_split, "validation")]


def log_datasets(client: MlflowClient, run_id: str, cfg: Config, progress: bool = False) -> list[DatasetInput]:
    """Log the run's training and validation splits as its dataset inputs (`dataset_inputs`)."""
    inputs = dataset_inputs(cfg, progress)
    client.log_inputs(run_id, datasets=inputs)
    return inputs
