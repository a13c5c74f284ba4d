"""Deviation alarms' condition: |actual - setpoint| beyond a deadband for longer than a delay,
returning once back inside the deadband minus a hysteresis. Pure, with injected time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DeviationSpec:
    """How far (in the measured quantity's units) and how long before a deviation is an alarm."""

    deadband: float
    delay_s: float = 0.0
    hysteresis: float = 0.0

    def __post_init__(self) -> None:
        if self.deadband <= 0:
            raise ValueError("deadband must be positive")
        if self.delay_s < 0:
            raise ValueError("delay_s must not be negative")
        if not 0 <= self.hysteresis < self.deadband:
            raise ValueError("hysteresis must lie in [0, deadband)")

    @classmethod
    def percent_of_full_scale(
        cls, percent: float, full_scale: float, delay_s: float, hysteresis_percent: float = 0.0
    ) -> DeviationSpec:
        """E.g. "flow off by more than 5 % of full scale for 5 s"."""
        return cls(
            deadband=full_scale * percent / 100.0,
            delay_s=delay_s,
            hysteresis=full_scale * hysteresis_percent / 100.0,
        )


class DeviationMonitor:
    """Raises after the deviation has stayed beyond the deadband for `delay_s`; returns at once
    when it is back inside `deadband - hysteresis` (so a noisy signal does not chatter)."""

    def __init__(self, spec: DeviationSpec) -> None:
        self.spec = spec
        self._active = False
        self._outside_since: float | None = None

    @property
    def active(self) -> bool:
        return self._active

    def reset(self) -> None:
        self._active = False
        self._outside_since = None

    def update(self, actual: float, setpoint: float | None, now: float) -> bool:
        if setpoint is None:
            # No setpoint, nothing to deviate from.
            self.reset()
            return False
        error = abs(actual - setpoint)
        if self._active:
            if error < self.spec.deadband - self.spec.hysteresis:
                self.reset()
            return self._active
        if error <= self.spec.deadband:
            self._outside_since = None
            return False
        if self._outside_since is None:
            self._outside_since = now
        self._active = now - self._outside_since >= self.spec.delay_s
        return self._active
