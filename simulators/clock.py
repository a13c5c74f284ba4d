"""Process time for the simulated plant.

Under ``--time-scale N`` the plant's dynamics run N times faster than the wall clock; safety
timing (heartbeat watchdog, link timeouts) stays in wall time (domain.md rule 7). Tests inject
a ManualClock to step the plant deterministically."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    time_scale: float

    def wall(self) -> float:
        """Monotonic wall seconds: for safety timing."""
        ...

    def process(self) -> float:
        """Monotonic process seconds: wall time scaled by time_scale."""
        ...


class ScaledClock:
    def __init__(self, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.time_scale = time_scale
        self._wall0 = time.monotonic()

    def wall(self) -> float:
        return time.monotonic()

    def process(self) -> float:
        return (time.monotonic() - self._wall0) * self.time_scale


class ManualClock:
    """A clock that moves only when told to: for deterministic unit tests."""

    def __init__(self, time_scale: float = 1.0) -> None:
        self.time_scale = time_scale
        self._wall = 0.0

    def wall(self) -> float:
        return self._wall

    def process(self) -> float:
        return self._wall * self.time_scale

    def advance(self, wall_s: float) -> None:
        self._wall += wall_s
