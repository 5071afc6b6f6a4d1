"""PGNet as an MLflow pyfunc model: a batch of RGB images in, one table row per person out.

`mlflow.pyfunc.load_model(uri).predict(images)` loads the run's best checkpoint with
`pgnet.predict.Predictor` and returns the people `Predictor.people` finds, in image pixels:

    input   uint8 (N, H, W, 3) RGB, a batch of same-size images; images of different sizes as a
            1-D object array of (H, W, 3) arrays (MLflow's ragged tensors); one image: `image[None]`
    output  a DataFrame, one row per person: image (index in the batch), person (its rank in the
            image, highest score first), score, box_x, box_y, box_width, box_height (COCO xywh),
            and <key point>_x, <key point>_y, <key point>_score for the 17 COCO key points

The loaded model imports this module: it is part of the installed `pipelines` package, so a model
is served wherever the package is installed.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from pgnet.data.skeleton import KEYPOINT_NAMES
from pgnet.errors import DataError

CHECKPOINT_ARTIFACT = "checkpoint"  # the key of the best checkpoint in the model's artifacts
PERSON_COLUMNS = ("image", "person", "score", "box_x", "box_y", "box_width", "box_height")
KEYPOINT_COLUMNS = tuple(f"{name}_{part}" for name in KEYPOINT_NAMES for part in ("x", "y", "score"))
COLUMNS = PERSON_COLUMNS + KEYPOINT_COLUMNS
INTEGER_COLUMNS = ("image", "person")


class PGNetPeople(PythonModel):
    """The pyfunc model: `load_context` builds the `Predictor` of the logged checkpoint."""

    def load_context(self, context) -> None:
        from pgnet.predict import Predictor
        self.predictor = Predictor.from_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> pd.DataFrame:
        images = as_pil_images(model_input)
        batch = max(1, int(self.predictor.cfg.eval.batch_size))
        people: list[list[dict]] = []
        for start in range(0, len(images), batch):  # the batch size the run evaluated with bounds memory
            people.extend(self.predictor.people(images[start:start + batch]))
        return people_table(people)


def as_pil_images(model_input: Any) -> list:
    """The RGB images of a batch (N, H, W, 3), a ragged 1-D array or list of (H, W, 3) arrays, or one image."""
    from PIL import Image
    if isinstance(model_input, pd.DataFrame):
        raise DataError("PGNet's model takes uint8 image arrays (N, H, W, 3), not a DataFrame")
    if isinstance(model_input, np.ndarray) and model_input.dtype != object and model_input.ndim == 3:
        arrays: Sequence = [model_input]
    else:
        arrays = list(model_input)
    images = []
    for index, array in enumerate(arrays):
        array = np.asarray(array)
        if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
            raise DataError(f"image {index} is a {array.dtype} array of shape {array.shape}; PGNet's model takes "
                            "uint8 RGB images of shape (H, W, 3)")
        images.append(Image.fromarray(np.ascontiguousarray(array), "RGB"))
    return images


def people_table(people: Sequence[Sequence[dict]]) -> pd.DataFrame:
    """`Predictor.people`'s per-image COCO results as one row per person (the model's output)."""
    rows = []
    for image, found in enumerate(people):
        ranked = sorted(found, key=lambda p: -p["score"])
        for rank, person in enumerate(ranked):
            rows.append([image, rank, person["score"], *person["bbox"], *person["keypoints"]])
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.astype({c: "int64" if c in INTEGER_COLUMNS else "float64" for c in COLUMNS})


def model_signature():
    """The signature logged with the model: a uint8 image batch in, the people table out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec
    inputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3), name=None)])
    outputs = Schema([ColSpec("long" if c in INTEGER_COLUMNS else "double", c) for c in COLUMNS])
    return ModelSignature(inputs=inputs, outputs=outputs)
