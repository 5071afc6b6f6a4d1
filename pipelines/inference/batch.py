"""Batch inference on Ray Data: every image of a folder or a COCO split in, one record out, on the cluster.

The model file's bytes go through Ray's object store (a node needs no copy of its own: the reference
rides in a list, so that an actor's arguments stay small and restartable); the images are read
by absolute path on the node that predicts them, as training reads its data (a cluster shares it). `map_batches` runs a
pool of `ModelReplica` actors, each holding one `Predictor` (a GPU each with `gpus_per_replica`).
An image that cannot be read comes back as a record with its reason: it is counted and reported,
never dropped. The driver streams the records into a COCO results file that `pgnet eval` scores.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pgnet.data.dataset import coco_paths
from pgnet.data.records import load_coco_records
from pgnet.errors import ConfigError, DataError
from pgnet.predict import expand_images, image_ids
from pgnet.progress import progress_bar

log = logging.getLogger("pgnet.infer")


@dataclass(frozen=True)
class ImageJob:
    """What is predicted: (image id, file) pairs, and where they came from (for messages)."""
    images: list[tuple[int, str]]
    source: str

    @classmethod
    def from_folder(cls, paths: list[str | Path]) -> "ImageJob":
        """Image files and folders of them, numbered as `pgnet predict` numbers them (`image_ids`)."""
        files = expand_images(paths)
        return cls(list(zip(image_ids(files), (str(f.absolute()) for f in files))), ", ".join(map(str, paths)))

    @classmethod
    def from_coco(cls, root: str | Path, split: str) -> "ImageJob":
        """Every image of a COCO split (also those without people), so that `pgnet eval` scores them all."""
        ann_file, image_dir = coco_paths(root, split)
        records, _ = load_coco_records(ann_file, image_dir)
        return cls([(r.image_id, str(Path(r.file).absolute())) for r in records], str(ann_file))


@dataclass
class BatchReport:
    """What a batch inference did: images in, records out, the people found, and the unreadable images."""
    images: int = 0
    predicted: int = 0
    people: int = 0
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # end to end: the actors' start and model load included
    first_record_seconds: float = 0.0  # until the first record came back: start-up and a first batch

    @property
    def steady_images_per_s(self) -> float | None:
        """Images/s once the first record is back: what a long job converges to."""
        after = self.seconds - self.first_record_seconds
        return (self.predicted - 1) / after if self.predicted > 1 and after > 0 else None

    def to_dict(self) -> dict[str, Any]:
        steady = self.steady_images_per_s
        return {"images": self.images, "predicted": self.predicted, "people": self.people,
                "unreadable": self.unreadable, "seconds": round(self.seconds, 3),
                "first_record_seconds": round(self.first_record_seconds, 3),
                "images_per_s": round(self.images / self.seconds, 3) if self.seconds else None,
                "steady_images_per_s": round(steady, 3) if steady else None}


class ModelReplica:
    """A Ray Data actor: one Predictor, a batch of rows (image_id, file) in, one row per image out."""

    def __init__(self, model: list, suffix: str, threads: int, device: str):
        import ray
        import torch

        from pgnet.predict import Predictor
        torch.set_num_threads(max(1, threads))
        with tempfile.NamedTemporaryFile(suffix=suffix) as file:  # loaders read paths
            file.write(ray.get(model[0]))
            file.flush()
            self.predictor = Predictor.load(file.name, device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pgnet.data.sample import BadSample, read_image
        ids, files = [int(i) for i in batch["image_id"]], [str(f) for f in batch["file"]]
        images, readable, errors = [], [], [""] * len(ids)
        for n, path in enumerate(files):
            try:
                images.append(read_image(path))
                readable.append(n)
            except BadSample as err:
                errors[n] = err.reason
        people = [[] for _ in ids]
        for n, found in zip(readable, self.predictor.people(images, [ids[n] for n in readable])):
            people[n] = found
        return {"image_id": np.asarray(ids, np.int64), "file": np.asarray(files, object),
                "ok": np.asarray([not e for e in errors]), "error": np.asarray(errors, object),
                "people": np.asarray([json.dumps(p) for p in people], object)}


def run_batch_inference(model: str | Path, job: ImageJob, out: str | Path, *, replicas: int = 2,
                        batch_size: int = 8, cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0,
                        progress: bool = True) -> BatchReport:
    """Predict every image of `job` on `replicas` model replicas; writes `out` (COCO results, sorted by
    image id) and `<out>.report.json` (`BatchReport`). Ray must be running (`ensure_ray`)."""
    import time

    import ray
    import ray.data

    model, out = Path(model), Path(out)
    if not model.is_file():
        raise ConfigError(f"model {model} not found; pass a checkpoint written by `pgnet train` or a file "
                          "written by `pgnet export`")
    if not job.images:
        raise DataError(f"{job.source} holds no images to predict")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist; create it or name another file")
    threads = max(1, int(cpus_per_replica))
    device = "cuda" if gpus_per_replica > 0 else "cpu"
    start = time.perf_counter()
    rows = [{"image_id": i, "file": f} for i, f in job.images]
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts images; Ray Data's own bars and progress logs would interleave
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    blocks = max(1, min(math.ceil(len(rows) / batch_size), 4 * replicas))  # enough blocks to feed every replica
    dataset = ray.data.from_items(rows, override_num_blocks=blocks)
    predicted = dataset.map_batches(
        ModelReplica, fn_constructor_args=([ray.put(model.read_bytes())], model.suffix, threads, device),
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=replicas),
        num_cpus=cpus_per_replica,
        num_gpus=gpus_per_replica)
    report, results = BatchReport(images=len(rows)), []
    for row in progress_bar(predicted.iter_rows(), enabled=progress, total=len(rows), desc="infer", unit="image"):
        report.predicted += 1
        if report.predicted == 1:
            report.first_record_seconds = time.perf_counter() - start
        if row["ok"]:
            people = json.loads(row["people"])
            results.extend(people)
            report.people += len(people)
        else:
            report.unreadable.append({"image_id": int(row["image_id"]), "file": row["file"], "reason": row["error"]})
    report.seconds = time.perf_counter() - start
    results.sort(key=lambda r: (r["image_id"], -r["score"]))
    out.write_text(json.dumps(results))
    Path(f"{out}.report.json").write_text(json.dumps(report.to_dict(), indent=1))
    if report.predicted != report.images:  # cannot happen with Ray Data's one-row-per-row map; said if it does
        raise DataError(f"batch inference returned {report.predicted} records for {report.images} images")
    if report.unreadable:
        log.warning("%d of %d images could not be read (listed in %s.report.json)", len(report.unreadable),
                    report.images, out)
    return report
