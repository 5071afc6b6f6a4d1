"""MLflow hooks against a real MLflow store: step records leave every `flush_every` steps, evaluations at once."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from pgnet.config import Config
from pipelines.tracking.hooks import MlflowHooks
from pipelines.tracking.runs import start_run


def logged_steps(client: MlflowClient, run_id: str, key: str = "loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_step_records_are_sent_every_flush_every_steps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a new experiment's artifacts go to ./mlruns
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = Config()
    cfg.tracking.experiment = "hooks"
    run_id = start_run(client, cfg, run_name="flush")
    hooks = MlflowHooks(client, run_id, flush_every=5)
    for step in range(1, 5):
        hooks.on_step({"step": step, "epoch": 1, "loss": 1.0 / step})
    assert logged_steps(client, run_id) == []  # 4 steps: still pending
    hooks.on_step({"step": 5, "epoch": 1, "loss": 0.2})
    assert logged_steps(client, run_id) == [1, 2, 3, 4, 5]
    hooks.on_step({"step": 6, "epoch": 1, "loss": 0.1})
    hooks.on_eval({"step": 6, "epoch": 1, "keypoints/AP": 0.3})
    assert logged_steps(client, run_id) == [1, 2, 3, 4, 5, 6]
    assert logged_steps(client, run_id, "keypoints/AP") == [6]
    hooks.on_step({"step": 7, "epoch": 2, "loss": 0.05})
    hooks.on_epoch_end(2)
    assert logged_steps(client, run_id) == list(range(1, 8))
