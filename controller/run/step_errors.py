"""What a recipe step raises when it cannot do its work; the supervisor decides what follows."""

from __future__ import annotations


class StepFailed(Exception):
    """A step could not do its work (ignition failed, an axis never arrived...)."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


class IgnitionFailed(StepFailed):
    pass
