"""The loop-lag watchdog: the controller watches the machine only as often as its event loop
lets the safety cycle run. Fed by a probe that sleeps one safety period: a wake-up late by
more than one period raises an alarm (held for ``LATE_HOLD_S`` after the last late one, so a
busy moment is one alarm, not a flicker); a gap past ``max_safety_gap_s`` is a starved loop:
the run holds. The safety PLC's heartbeat timeout stays the backstop for a loop that never
comes back."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# A late cycle keeps the alarm up this long (wall seconds) after the last one.
LATE_HOLD_S = 5.0


@dataclass(frozen=True, slots=True)
class CycleHealth:
    gap_s: float  # since the previous cycle
    late: bool  # a cycle late by more than one period within LATE_HOLD_S
    starved: bool  # this gap exceeded max_safety_gap_s


class SafetyCycleWatchdog:
    def __init__(self, period_s: float, max_gap_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = period_s
        self.max_gap_s = max_gap_s
        self._clock = clock
        self._last: float | None = None
        self._last_late: float | None = None
        self.late_cycles = 0
        self.worst_gap_s = 0.0

    def cycle(self) -> CycleHealth:
        """Called at every wake-up of the probe: how late this one is."""
        now = self._clock()
        gap = 0.0 if self._last is None else now - self._last
        self._last = now
        if gap > 2 * self.period_s:  # late by more than one period
            self.late_cycles += 1
            self._last_late = now
        self.worst_gap_s = max(self.worst_gap_s, gap)
        late = self._last_late is not None and now - self._last_late < LATE_HOLD_S
        return CycleHealth(gap, late, gap > self.max_gap_s)
