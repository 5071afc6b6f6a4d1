"""The background sender: a run's MLflow traffic off its training steps, with a bounded retry budget.

A daemon thread calls `RunMirror.sync` every few seconds (at once after an evaluation). Training never
waits for MLflow: a slow or unreachable server only delays the copy. When the server has not answered for
`tracking.retry_seconds`, the sender stops trying for the rest of the run; at the run's end it tries
again for at most what is left of that budget, then warns what did not arrive and how to send it
(`pgnet mlflow sync RUN_DIR`). Everything stays in the run directory either way.
"""
from __future__ import annotations

import logging
import threading
import time

from pipelines.tracking.mirror import RunMirror

log = logging.getLogger("pgnet.tracking")

INTERVAL_S = 5.0  # between two syncs: step records reach the UI within this


class BackgroundSender:
    def __init__(self, mirror: RunMirror, budget_s: float, interval_s: float = INTERVAL_S):
        self.mirror, self.budget_s, self.interval_s = mirror, budget_s, interval_s
        self.down_since: float | None = None  # monotonic time of the first failure of the current outage
        self.gave_up = False
        self.complete = False  # the ended run has all reached MLflow
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pgnet-mlflow-sender", daemon=True)

    @property
    def uri(self) -> str:
        return self.mirror.ledger.uri

    def start(self) -> "BackgroundSender":
        self._thread.start()  # its first sync is at once: the run appears in MLflow as training starts
        return self

    def poke(self) -> None:
        """Sync now rather than at the next interval (an evaluation arrived)."""
        self._wake.set()

    def attempt(self, final: bool = False) -> bool:
        """One sync; a failure starts or extends the outage, and ends the run's attempts past the budget."""
        try:
            self.mirror.sync(final=final)
        except Exception as exc:  # an unreachable server surfaces as many exception types; all mean "later"
            self._failed(exc)
            return False
        if self.down_since is not None:
            log.warning("MLflow at %s answers again after %.0f s; the run's records have caught up", self.uri,
                        time.monotonic() - self.down_since)
        self.down_since = None
        return True

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        if self.down_since is None:
            self.down_since = now
            log.warning("MLflow at %s did not answer (%s); training goes on, its records wait in %s and are sent "
                        "when it answers (retrying for %.0f s)", self.uri, reason, self.mirror.run_dir.path,
                        self.budget_s)
        elif now - self.down_since >= self.budget_s and not self.gave_up:
            self.gave_up = True
            log.warning("MLflow at %s has not answered for %.0f s (%s): no more attempts in this run", self.uri,
                        now - self.down_since, reason)

    def _loop(self) -> None:
        while not self._stop.is_set() and not self.gave_up:
            self.attempt()
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def finish(self, status: str) -> bool:
        """Stop the thread, note the run's `status`, send the rest within the budget. True if all arrived."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        self.mirror.end(status)
        if not self.gave_up:
            deadline = (self.down_since or time.monotonic()) + self.budget_s
            while not self.attempt(final=True):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(self.interval_s, left))
            else:
                self.complete = True
                return True
        self.warn_pending()
        return False

    def warn_pending(self) -> None:
        missing = self.mirror.pending()
        log.warning("MLflow at %s did not receive: %s. The run directory %s holds all of it; once the server "
                    "answers, send it with: pgnet mlflow sync %s", self.uri, "; ".join(missing) or "nothing",
                    self.mirror.run_dir.path, self.mirror.run_dir.path)
