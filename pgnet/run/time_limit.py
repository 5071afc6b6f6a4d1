"""`train.time_limit`: a run that ends when its minutes are up, its LR schedule fitted to the steps that fit.

Ultralytics' `time`: the run's length is re-estimated after every step from its pace so far (steps and
periodic evaluations), so that the schedule reaches its end as the time runs out, and no step starts once
the time is up (the last one may end up to one step late). The final evaluation and checkpoint follow.
Such a run is not reproducible step for step: how many steps fit depends on the machine's speed.
"""
from __future__ import annotations

import time
from collections.abc import Callable

MIN_STEPS = 5  # steps measured before the first estimate (the first ones are slower: allocations, kernel choice)


class TimeBudget:
    """`minutes` of training across resumes, from step `step`: `used` seconds were spent before (a resumed run)."""

    def __init__(self, minutes: float, step: int = 0, used: float = 0.0,
                 clock: Callable[[], float] = time.perf_counter):
        self.seconds = 60.0 * minutes
        self.before = float(used)
        self.first_step = step
        self.clock = clock
        self.start = clock()

    def used(self) -> float:
        """Seconds of the budget spent, this process's and the ones before a resume."""
        return self.before + self.clock() - self.start

    def plan(self, step: int, planned: int) -> int:
        """The run's length in steps after `step` steps: `step` itself once the time is up; `planned` (and at
        least MIN_STEPS more than this process started from) until that many steps were measured; then
        `step` plus the steps that the time left fits at this process's pace so far."""
        here = self.clock() - self.start
        used = self.before + here
        if used >= self.seconds:
            return step
        measured = step - self.first_step
        if measured < MIN_STEPS:
            return max(planned, self.first_step + MIN_STEPS)
        return step + int((self.seconds - used) * measured / max(here, 1e-9))
