"""Where to look at runs in the MLflow UI: the command that serves a store, and a URL that lands on an
experiment's runs table in the "Model training" view, showing the runs and columns that matter.

What MLflow 3.17's UI reads (its bundle, mlflow/server/js/build/static/js):
- the view: the `workflowType` URL parameter (`machine_learning` or `genai`), else the browser's
  localStorage `mlflow.workflowType`, else `genai` (main.*.js, module 7975); the experiment tag
  `mlflow.experimentKind` is only read when the workflow switch is off, and 3.17 has it on (module
  89511). `runs.experiment_id` sets the tag all the same, for the UI's kind selector and older 3.x.
- the table: a shared view (`?viewStateShareKey=KEY`) is the experiment tag `mlflow.sharedViewState.KEY`
  holding JSON: the search facets (`searchFilter`, `orderByKey`, `orderByAsc`) and the UI state
  (`selectedColumns`, ...). Expanded child runs (`runsExpanded`) are dropped from a shared view and are not
  a URL parameter: child runs show under a collapsed parent only while the table is sorted by start
  time without a filter (3878.*.js). A view sorted by a metric, or filtered, lists every matching run
  as a row of its own, so a sweep's view filters on its parent run and sorts by the sweep's metric.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlencode

from mlflow.tracking import MlflowClient

WORKFLOW_TYPE = "machine_learning"  # the "Model training" view
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
UI_PORT = 5000
# The UI's own default columns but Source (empty for runs that the platform creates): the table is wide.
DEFAULT_COLUMNS = ("attributes.`Models`", "attributes.`Dataset`")


def runs_table_url(base_url: str, experiment_id: str, view_key: str | None = None) -> str:
    """The URL of the experiment's runs table in the Model training view, with the shared view `view_key`."""
    query = {"workflowType": WORKFLOW_TYPE, **({"viewStateShareKey": view_key} if view_key else {})}
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def save_runs_view(client: MlflowClient, experiment_id: str, params: tuple[str, ...] = (),
                   metrics: tuple[str, ...] = (), order_metric: str | None = None, ascending: bool = False,
                   search_filter: str = "") -> str:
    """Store a view of the runs table (these param and metric columns, sorted by `order_metric`, filtered by
    `search_filter`) as an experiment tag; returns its key, the same for the same view."""
    state = {
        "searchFilter": search_filter,
        "orderByKey": f"metrics.`{order_metric}`" if order_metric else "attributes.start_time",
        "orderByAsc": ascending if order_metric else False,
        "selectedColumns": [*DEFAULT_COLUMNS, *(f"params.`{p}`" for p in params),
                            *(f"metrics.`{m}`" for m in metrics)],
    }
    text = json.dumps(state, sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + key, text)
    return key


def child_runs_filter(parent_run_id: str) -> str:
    """The search filter of a parent run's children (a sweep's trials)."""
    return f"tags.`mlflow.parentRunId` = '{parent_run_id}'"


def ui_instructions(tracking_uri: str, experiment_id: str, view_key: str | None = None) -> list[str]:
    """How to open the view: the `mlflow ui` command for a local store, then the URL (a server's own for
    an http store)."""
    if tracking_uri.startswith(("http://", "https://")):
        return [f"open {runs_table_url(tracking_uri, experiment_id, view_key)}"]
    return [f"{mlflow_command()} ui --backend-store-uri {tracking_uri} --port {UI_PORT}",
            f"then open {runs_table_url(f'http://127.0.0.1:{UI_PORT}', experiment_id, view_key)}"]


def run_ui_lines(client: MlflowClient, run_id: str) -> list[str]:
    """How to see a `pgnet train` run among its experiment's runs, with the main COCO stats as columns."""
    experiment_id = client.get_run(run_id).info.experiment_id
    key = save_runs_view(client, experiment_id, metrics=("keypoints/AP", "bbox/AP", "loss"))
    return ["see the run in the MLflow UI:",
            *(f"  {line}" for line in ui_instructions(client.tracking_uri, experiment_id, key))]


def mlflow_command() -> str:
    """The `mlflow` script of this interpreter's environment (a venv's, wherever it is), relative when short."""
    script = Path(sys.executable).parent / "mlflow"
    if not script.exists():
        return "mlflow"
    relative = os.path.relpath(script)
    return relative if not relative.startswith("..") else str(script)
