"""Process time for the controller (domain.md rule 7).

Under ``--time-scale N`` a recipe's durations pass N times faster; waits on the wire (a device
answering, an axis reporting in position) still get a wall-time margin, since polls and link
timeouts stay in wall time."""

from __future__ import annotations

import asyncio
import time


class ProcessClock:
    def __init__(self, time_scale: float = 1.0, *, wire_margin_s: float = 3.0) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.time_scale = time_scale
        self.wire_margin_s = wire_margin_s
        self._wall0 = time.monotonic()

    def now(self) -> float:
        """Process seconds since the clock was made."""
        return (time.monotonic() - self._wall0) * self.time_scale

    async def sleep(self, process_s: float) -> None:
        if process_s > 0:
            await asyncio.sleep(process_s / self.time_scale)

    def wall_budget(self, process_s: float) -> float:
        """Wall seconds to allow for something expected to take process_s."""
        return max(0.0, process_s) / self.time_scale + self.wire_margin_s
