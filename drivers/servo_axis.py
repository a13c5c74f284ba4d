"""Servo drive driver (spindle, carriage, torch slide) over Modbus RTU.

A thin facade over ``drivers.codecs.servo_map`` (docs/devices.md, "Servo drives"): it speaks
mm, mm/min and rpm, checks every value against the axis limits before anything is sent, and
holds no policy. Each motion follows the drive's pattern: setpoints (mode, target, speed,
acceleration) in one write, then the trigger in the control word; ``read`` polls the status."""

from __future__ import annotations

import math
from typing import Literal

import structlog

from drivers.codecs import servo_map
from drivers.codecs.servo_map import AxisMode, AxisStatus, Control
from drivers.errors import DeviceProtocolError, DeviceRangeError
from drivers.transports.modbus import ModbusTransport

__all__ = ["AxisMode", "AxisStatus", "ServoAxis"]

log = structlog.get_logger(__name__)

Motion = Literal["rotary", "linear"]


class ServoAxis:
    """One drive at one unit id on a (possibly shared) RTU bus.

    Rotary axes: speeds in rpm, no travel (position moves are refused). Linear axes: positions
    in mm within [min_position_mm, max_position_mm], speeds in mm/min. Accelerations are in
    rpm/s or mm/s^2; ``None`` means the axis maximum."""

    def __init__(
        self,
        transport: ModbusTransport,
        unit: int,
        *,
        name: str,
        motion: Motion,
        min_position_mm: float = 0.0,
        max_position_mm: float = 0.0,
        max_speed: float,
        max_acceleration: float,
    ) -> None:
        if motion == "linear" and max_position_mm <= min_position_mm:
            raise ValueError(f"{name}: max_position_mm must exceed min_position_mm")
        if max_speed <= 0 or max_acceleration <= 0:
            raise ValueError(f"{name}: max_speed and max_acceleration must be positive")
        self.transport = transport
        self.unit = unit
        self.name = name
        self.motion: Motion = motion
        self.min_position_mm = min_position_mm
        self.max_position_mm = max_position_mm
        self.max_speed = max_speed
        self.max_acceleration = max_acceleration
        self._log = log.bind(device=name, unit=unit)

    # -- enable ------------------------------------------------------------------------------
    async def enable(self) -> None:
        """Enable the power stage (refused by the drive while an alarm is latched or the
        drive has no power)."""
        await self._control(Control.ENABLE)

    async def disable(self) -> None:
        """Disable: the drive ramps to a stop and releases torque."""
        await self._control(Control(0))

    # -- motion ------------------------------------------------------------------------------
    async def set_velocity(self, speed: float, acceleration: float | None = None) -> None:
        """Velocity mode: run at ``speed`` (signed, rpm or mm/min) until told otherwise."""
        self._check("speed", speed, -self.max_speed, self.max_speed)
        accel = self._acceleration(acceleration)
        await self._start(AxisMode.VELOCITY, 0.0, speed, accel)

    async def move_absolute(
        self, position_mm: float, speed: float, acceleration: float | None = None
    ) -> None:
        """Move to ``position_mm`` (linear axes, homed) at up to ``speed``."""
        self._check("position_mm", position_mm, self.min_position_mm, self.max_position_mm)
        self._check_position_move(position_mm)
        self._check("speed", speed, 0.0, self.max_speed, low_open=True)
        accel = self._acceleration(acceleration)
        await self._start(AxisMode.POSITION_ABSOLUTE, position_mm, speed, accel)

    async def move_relative(
        self, distance_mm: float, speed: float, acceleration: float | None = None
    ) -> None:
        """Move by ``distance_mm``; the drive refuses a target outside travel (exception 3)."""
        span = self.max_position_mm - self.min_position_mm
        self._check("distance_mm", distance_mm, -span, span)
        self._check_position_move(distance_mm)
        self._check("speed", speed, 0.0, self.max_speed, low_open=True)
        accel = self._acceleration(acceleration)
        await self._start(AxisMode.POSITION_RELATIVE, distance_mm, speed, accel)

    async def jog(self, direction: int, speed: float) -> None:
        """Jog in ``direction`` (+1 / -1) at ``speed`` until ``stop`` (or the travel end)."""
        if direction not in (1, -1):
            raise DeviceRangeError(self.name, "direction", direction, -1, 1)
        self._check("speed", speed, 0.0, self.max_speed, low_open=True)
        await self.transport.write_registers(
            self.unit, servo_map.HR_JOG_SPEED, servo_map.encode_speed(speed)
        )
        bit = Control.JOG_POSITIVE if direction > 0 else Control.JOG_NEGATIVE
        await self._control(Control.ENABLE | bit)

    async def home(self) -> None:
        """Reference the axis: a linear axis runs to its negative end, a rotary one zeroes."""
        await self._control(Control.ENABLE | Control.HOME)

    async def stop(self) -> None:
        """Decelerate to a stop at the commanded acceleration; the drive stays enabled."""
        await self._control(Control.ENABLE | Control.STOP)

    async def reset_alarm(self) -> None:
        """Clear a latched alarm (only once its cause is gone); the drive stays disabled."""
        await self._control(Control.ENABLE | Control.RESET_ALARM)

    # -- status ------------------------------------------------------------------------------
    async def read(self) -> AxisStatus:
        words = await self.transport.read_input(
            self.unit, servo_map.IR_STATUS, servo_map.INPUT_COUNT
        )
        try:
            return servo_map.decode_inputs(words)
        except ValueError as exc:
            raise DeviceProtocolError(self.name, "read status", str(exc)) from exc

    # -- helpers -----------------------------------------------------------------------------
    async def _start(
        self, mode: AxisMode, position_mm: float, velocity: float, acceleration: float
    ) -> None:
        block = servo_map.encode_motion_block(mode, position_mm, velocity, acceleration)
        await self.transport.write_registers(self.unit, servo_map.HR_MODE, block)
        await self._control(Control.ENABLE | Control.START)
        self._log.debug("servo.start", mode=mode.name, target=position_mm, velocity=velocity)

    async def _control(self, word: Control) -> None:
        await self.transport.write_register(self.unit, servo_map.HR_CONTROL, int(word))

    def _acceleration(self, acceleration: float | None) -> float:
        if acceleration is None:
            return self.max_acceleration
        self._check("acceleration", acceleration, 0.0, self.max_acceleration, low_open=True)
        return acceleration

    def _check_position_move(self, value: float) -> None:
        if self.motion == "rotary":
            # A rotary axis has no travel: the drive runs it by velocity only.
            raise DeviceRangeError(
                self.name, "position_mm", value, self.min_position_mm, self.max_position_mm
            )

    def _check(
        self, quantity: str, value: float, low: float, high: float, *, low_open: bool = False
    ) -> None:
        below = value <= low if low_open else value < low
        if below or value > high or math.isnan(value):
            raise DeviceRangeError(self.name, quantity, value, low, high)
