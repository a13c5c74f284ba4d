"""The dry run's one clock, and its place behind ``time.monotonic`` and ``time.time``.

The controller, the drivers and the simulators read wall time from ``time.monotonic()`` (link
timeouts, poll schedules, deadlines, the simulated PLC's watchdog, the line's tick) and stamp
records with ``time.time()``, some through defaults bound when their module is imported
(``clock=time.time``). A dry run is a process of its own, so ``install`` swaps both functions
for this clock's before anything else is imported: every reading, in every module, is then the
virtual loop's, with no ``if virtual`` anywhere. ``threading`` is imported first on purpose:
its waits keep the real clock (a thread waits in real time while virtual time stands still)."""

from __future__ import annotations

import threading  # noqa: F401 - before the swap: threading binds time.monotonic at import
import time


class VirtualClock:
    """Seconds that move only when the virtual loop moves them. ``now`` starts at the real
    monotonic reading; ``epoch()`` is the real epoch at creation plus the virtual time since."""

    def __init__(self) -> None:
        self.now = time.monotonic()
        self._epoch_offset = time.time() - self.now

    def monotonic(self) -> float:
        return self.now

    def epoch(self) -> float:
        return self.now + self._epoch_offset


def install() -> VirtualClock:
    """Put a new VirtualClock behind time.monotonic and time.time for the rest of the process
    (a dry run's process only: nothing gives the real clocks back)."""
    clock = VirtualClock()
    time.monotonic = clock.monotonic
    time.time = clock.epoch
    return clock
