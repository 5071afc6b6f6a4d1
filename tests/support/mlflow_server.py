"""A real `mlflow server` for the tests: an SQLite store and an artifacts folder under one root, on a port.

It can be stopped and started again on the same store and port, or frozen and thawed (a server that hangs:
connections open, nothing answers, as on a lost network), as an outage and its end."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MLFLOW = Path(sys.executable).with_name("mlflow")
SERVER_START_S = 180  # a loaded 2-core machine: it usually answers within 10 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, root: Path, port: int | None = None):
        self.root, self.port = Path(root), port or free_port()
        self.process: subprocess.Popen | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        """Start the server and wait until it answers `/health`."""
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers
        with open(self.root / "server.log", "ab") as log:  # the server keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                 "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port",
                 str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=env, start_new_session=True)
        deadline = time.time() + SERVER_START_S
        while not self.answers():
            if self.process.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        return self

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def freeze(self) -> None:
        """The server and its worker stop running; the kernel still accepts connections, nothing answers."""
        os.killpg(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        """Stop the server and its uvicorn worker (their own process group)."""
        if self.process is None:
            return
        if self.frozen:
            self.thaw()
        with_group = self.process.pid
        try:
            os.killpg(with_group, signal.SIGTERM)
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(with_group, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass
        self.process = None
