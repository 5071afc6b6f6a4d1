"""The bad-sample budget: unreadable images are skipped and counted; too many of them stop the run."""
from __future__ import annotations

from dataclasses import dataclass

from pgnet.errors import TrainingError


@dataclass
class BadSampleBudget:
    """Counts skipped images and stops the run once they exceed `max_fraction` of those seen."""

    max_fraction: float
    seen: int = 0
    bad: int = 0
    min_seen: int = 20  # judge the fraction mid-epoch only after this many images

    def add(self, seen: int, bad: int) -> None:
        self.seen += seen
        self.bad += bad
        if self.seen >= self.min_seen:
            self.check()

    def check(self) -> None:
        """Raise if too many images were bad; also called at the end of an epoch, whatever `seen` is."""
        if self.bad and self.bad > self.max_fraction * max(self.seen, 1):
            raise TrainingError(
                f"{self.bad} of {self.seen} images could not be read (more than data.max_bad_fraction="
                f"{self.max_fraction}); the log names each one. Fix or remove them, or raise the limit.")
