"""Reconnect pacing shared by every transport: exponential, capped, reset on success."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial_s: float = 0.05
    maximum_s: float = 2.0
    _delay_s: float = field(default=0.0, init=False)
    _not_before: float = field(default=0.0, init=False)

    def ready(self) -> bool:
        """True when a reconnect attempt may be made now (never blocks the caller)."""
        return time.monotonic() >= self._not_before

    def failed(self) -> None:
        self._delay_s = min(self.maximum_s, max(self.initial_s, self._delay_s * 2))
        self._not_before = time.monotonic() + self._delay_s

    def succeeded(self) -> None:
        self._delay_s = 0.0
        self._not_before = 0.0

    @property
    def delay_s(self) -> float:
        return self._delay_s
