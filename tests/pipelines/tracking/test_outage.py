"""Drill: the tracking server hangs when a run starts, answers again mid-run, and hangs again before the run
ends (frozen with SIGSTOP: connections open, nothing answers, the worst case for a client). Training goes on
throughout; the end says what did not reach MLflow, and `pgnet mlflow sync` sends it once the server is back:
every step and evaluation once (a batch the frozen server took in, then ran after the thaw, is not stored
twice), the files, the model and the status."""
from __future__ import annotations

import time

from mlflow.tracking import MlflowClient

from pgnet.run.layout import RunDir
from pgnet.run.metrics_log import read_jsonl
from pgnet.train import train
from pipelines.cli.main import main
from pipelines.tracking.hooks import tracking_hooks
from pipelines.tracking.ledger import read_ledger
from pipelines.tracking.sender import BackgroundSender
from tests.support.mlflow_server import MlflowServer

CATCH_UP_S = 60  # a guard against a hang, not a timing claim


class Outage:
    """Trainer hook: the server answers again at step `back_at` (the step waits until the run has caught up in
    MLflow) and hangs from step `down_at`."""

    def __init__(self, server: MlflowServer, sender: BackgroundSender, back_at: int, down_at: int):
        self.server, self.sender, self.back_at, self.down_at = server, sender, back_at, down_at
        self.caught_up_s: float | None = None
        self.sent_before_down: int | None = None

    def on_step(self, record: dict) -> None:
        if record["step"] == self.back_at:
            self.server.thaw()
            answered = time.monotonic()
            while self.sender.down_since is not None or self.sender.mirror.ledger.run_id is None:
                assert time.monotonic() - answered < CATCH_UP_S, "the sender did not catch up with the server back"
                self.sender.poke()
                time.sleep(0.1)
            self.caught_up_s = time.monotonic() - answered
        if record["step"] == self.down_at:
            self.sent_before_down = self.sender.mirror.ledger.metrics_step
            self.sender.budget_s = 2.0  # the end's wait for the server, short in a test (a minute by default)
            self.server.freeze()


def test_a_tracking_outage_loses_nothing_once_synced(tmp_path, make_config, mlflow_server_process, monkeypatch,
                                                     capsys, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # one try per call,
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # given up after a second while the server hangs
    server = mlflow_server_process  # the session's server
    server.freeze()  # hung when the run starts
    cfg = make_config("train.epochs=2", "tracking.mlflow=true", f"tracking.tracking_uri={server.url}",
                      "tracking.experiment=outage")
    run_dir = RunDir(tmp_path / "run")
    try:
        with tracking_hooks(cfg, run_dir.path, progress=False) as hooks:
            sender = hooks[0].sender
            assert sender.mirror.ledger.run_id is None  # nobody answered at the start: training starts anyway
            outage = Outage(server, sender, back_at=2, down_at=6)
            train(cfg, run_dir.path, progress=False, hooks=[*hooks, outage])
            trained = time.monotonic()
        finish_s = time.monotonic() - trained
        steps = [r["step"] for r in read_jsonl(run_dir.metrics)]
        evaluations = [r["step"] for r in read_jsonl(run_dir.evaluations)]
        assert steps == list(range(1, 9)) and len(evaluations) == 2  # the run is whole in its directory
        assert outage.sent_before_down >= 2  # what came before the outage's end reached MLflow mid-run
        assert not sender.complete and read_ledger(run_dir.path).status == "FINISHED"
        assert "pgnet mlflow sync" in caplog.text and "step records" in caplog.text
        lost = [s for s in steps if s > read_ledger(run_dir.path).metrics_step]

        server.thaw()
        capsys.readouterr()
        assert main(["mlflow", "sync", str(run_dir.path)]) == 0
        assert "files, plots, model and status FINISHED" in capsys.readouterr().out
        assert main(["mlflow", "sync", str(run_dir.path)]) == 0
        assert "nothing to send" in capsys.readouterr().out

        client = MlflowClient(server.url)
        run = client.get_run(read_ledger(run_dir.path).run_id)
        assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "2"
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == steps  # each once
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "keypoints/AP")) == evaluations
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml", "metrics.jsonl"}
        assert len(run.inputs.dataset_inputs) == 2 and run.outputs.model_outputs
    finally:
        if server.frozen:
            server.thaw()
    print(f"\ntracking outage drill: caught up {outage.caught_up_s:.1f} s after the server was thawed; the end "
          f"waited {finish_s:.1f} s for it; {len(lost)} step records waited for the sync; 0 lost after it")
