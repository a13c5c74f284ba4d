"""What every part of the supervisor reads of the line it supervises (the parts' own Protocols
extend it with what each needs more): read-only, and no import of the supervisor, so no
circle."""

from __future__ import annotations

from typing import Protocol

from controller.config.line import LineConfig
from controller.machine.telemetry import Telemetry
from controller.run.process_clock import ProcessClock
from controller.safety.alarms import AlarmManager
from controller.safety.states import StateMachine
from controller.safety.writer import Actuators


class SupervisedLine(Protocol):
    @property
    def line(self) -> LineConfig: ...
    @property
    def clock(self) -> ProcessClock: ...
    @property
    def sm(self) -> StateMachine: ...
    @property
    def telemetry(self) -> Telemetry: ...
    @property
    def alarms(self) -> AlarmManager: ...
    @property
    def act(self) -> Actuators: ...
