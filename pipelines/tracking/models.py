"""A run's best checkpoint as an MLflow model, and a sweep's best model in the Model Registry.

`log_best_model` writes the pyfunc model of `pipelines.tracking.pyfunc` (the checkpoint is its one
artifact: it is uploaded once, with the model) as an MLflow 3 LoggedModel whose source is the run,
linked as the run's output at the best evaluation's step: the runs table's Models column shows it,
and the model page shows that evaluation's metrics. Nothing is inferred: the signature, the input
example and the pip requirements are given, so MLflow neither imports the model's libraries to
find requirements nor runs the model to check the example.
"""
from __future__ import annotations

import importlib.metadata
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pgnet.run.layout import BEST_METRIC, RunDir
from pgnet.run.metrics_log import read_jsonl

log = logging.getLogger("pgnet.tracking")

MODEL_NAME = "pgnet"  # the LoggedModel's name, in every run (the run tells them apart)
MODEL_TYPE = "pgnet-keypoints"
# What the pyfunc model imports when it loads and predicts (pgnet's own dependencies come with it).
REQUIREMENTS = ("pgnet", "mlflow", "torch", "torchvision", "numpy", "pandas", "pillow", "pycocotools", "pyyaml")
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")  # "models from code": the file MLflow runs to build it
EXAMPLE_SIZE = 16  # the input example: one mid-grey 16 x 16 image (its JSON is ~2 KB)


def pip_requirements() -> list[str]:
    """The installed versions of what the model needs, pinned."""
    return [f"{dist}=={importlib.metadata.version(dist)}" for dist in REQUIREMENTS]


def best_evaluation(run_dir: Path) -> dict:
    """The record of the evaluation that wrote `checkpoint_best.pt` (the first with the highest key-point AP)."""
    records = [r for r in read_jsonl(RunDir(run_dir).evaluations) if BEST_METRIC in r]
    return max(records, key=lambda r: r[BEST_METRIC]) if records else {}


def log_best_model(client: MlflowClient, run_id: str, run_dir: Path):
    """Log the run's `checkpoint_best.pt` as a pyfunc LoggedModel linked to the run; None without a checkpoint."""
    import mlflow.pyfunc
    from mlflow.models import Model

    from pipelines.tracking.pyfunc import CHECKPOINT_ARTIFACT, model_signature

    checkpoint = RunDir(run_dir).best_checkpoint
    if not checkpoint.exists():
        return None
    start = time.perf_counter()
    run = client.get_run(run_id)
    best = best_evaluation(run_dir)
    step = int(best.get("step", 0))
    model = client.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                       params=dict(run.data.params), model_type=MODEL_TYPE)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model"
            mlflow.pyfunc.save_model(
                str(path), python_model=str(MODEL_CODE), artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
                signature=model_signature(), input_example=np.full((1, EXAMPLE_SIZE, EXAMPLE_SIZE, 3), 128, np.uint8),
                pip_requirements=pip_requirements(),
                mlflow_model=Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
                                   model_id=model.model_id))
            client.log_model_artifacts(model.model_id, str(path))
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    _link_metrics(client, run_id, model.model_id, best)
    log.info("MLflow model %s of run %s logged in %.1f s", model.model_id, run_id, time.perf_counter() - start)
    return client.get_logged_model(model.model_id)


def _link_metrics(client: MlflowClient, run_id: str, model_id: str, best: dict) -> None:
    """The best evaluation's metrics, as the run logged them, also recorded as the model's."""
    from pipelines.tracking.mirror import metric_key  # mirror -> artifacts -> models: imported when called
    step = best.get("step")
    metrics = []
    for key in sorted(k for k in best if k not in ("step", "epoch")):
        for m in client.get_metric_history(run_id, metric_key(key)):
            if m.step == step:
                metrics.append(Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=run_id))
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def run_model_id(client: MlflowClient, run_id: str) -> str | None:
    """The id of the pgnet model the run logged last (its output at the highest step); None if it has none."""
    outputs = client.get_run(run_id).outputs
    found = sorted(outputs.model_outputs, key=lambda o: o.step) if outputs else []
    return found[-1].model_id if found else None


def register_run_model(client: MlflowClient, run_id: str, name: str):
    """A new version of the registered model `name` (created if missing) from the run's model; None if the
    run logged no model."""
    model_id = run_model_id(client, run_id)
    if model_id is None:
        return None
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id)
