"""What the controller needs of each device kind, as ``typing.Protocol``s.

The supervisor depends on these, never on driver classes: a real driver, a driver talking to
the simulator, or an in-memory fake in a unit test can stand behind each one."""

from __future__ import annotations

from typing import Protocol

from drivers.diameter_gauge import GaugeReading
from drivers.mfc import MfcReading
from drivers.rf_generator import RfStatus
from drivers.safety_io import SafetyInputs, SafetyOutputs
from drivers.servo_axis import AxisStatus


class RfGeneratorLike(Protocol):
    name: str

    # urgent: the write goes ahead of every request queued on the device's bus (the request in
    # flight finishes first): for the safety reaction's writes.
    async def set_power_kw(self, kw: float, *, urgent: bool = False) -> None: ...
    async def set_ramp_kw_s(self, rate: float) -> None: ...
    async def rf_on(self) -> None: ...
    async def rf_off(self, *, urgent: bool = False) -> None: ...
    async def reset_fault(self) -> None: ...
    async def read(self) -> RfStatus: ...


class MassFlowControllerLike(Protocol):
    name: str
    full_scale_slpm: float

    async def set_flow_slpm(self, slpm: float, *, urgent: bool = False) -> None: ...
    async def read(self) -> MfcReading: ...


class ServoAxisLike(Protocol):
    name: str

    async def enable(self) -> None: ...
    async def disable(self) -> None: ...
    async def set_velocity(self, speed: float, *, urgent: bool = False) -> None: ...
    async def move_absolute(
        self,
        position_mm: float,
        speed: float,
        acceleration: float | None = None,
        *,
        urgent: bool = False,
    ) -> None: ...
    async def move_relative(
        self, distance_mm: float, speed: float, acceleration: float | None = None
    ) -> None: ...
    async def jog(self, direction: int, speed: float) -> None: ...
    # Drive-side oscillation (linear axes): travel to first_mm, then `strokes` strokes between
    # the turning points (0: until stopped); the status counts them (strokes_done).
    async def oscillate(
        self,
        first_mm: float,
        second_mm: float,
        speed: float,
        strokes: int = 0,
        acceleration: float | None = None,
        *,
        urgent: bool = False,
    ) -> None: ...
    async def set_oscillation_speed(self, speed: float, *, urgent: bool = False) -> None: ...
    async def set_oscillation_strokes(self, strokes: int, *, urgent: bool = False) -> None: ...
    async def home(self) -> None: ...
    async def stop(self, *, urgent: bool = False) -> None: ...
    async def reset_alarm(self) -> None: ...
    async def read(self) -> AxisStatus: ...
    # The drive's communication watchdog (docs/devices.md, "Servo drives"): with no request
    # for timeout_s (0 = off) a linear axis stops with an alarm, a rotary one runs at
    # fallback_speed (rpm).
    async def configure_comm_watchdog(
        self, timeout_s: float, fallback_speed: float = 0.0
    ) -> None: ...


class SafetyIoLike(Protocol):
    name: str
    # Sent with every beat: the PLC counts beats only from the line's owner (rule 8).
    owner_id: int

    async def read(self) -> SafetyInputs: ...
    async def write_outputs(self, outputs: SafetyOutputs, *, urgent: bool = False) -> None: ...
    # One write of owner id and counter; claims the line when it is free or its owner is lost.
    async def heartbeat(self) -> None: ...
    # The next beat and the inputs in one exchange: the safety cycle's.
    async def beat_and_read(self) -> SafetyInputs: ...
    # Clear the PLC's latched heartbeat loss (accepted only while beats arrive again).
    async def reset_heartbeat_latch(self) -> None: ...


class DiameterGaugeLike(Protocol):
    name: str

    async def read(self) -> GaugeReading: ...
