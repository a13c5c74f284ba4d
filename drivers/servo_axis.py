"""Servo drive driver (spindle, carriage, torch slide) over Modbus RTU.

A thin facade over ``drivers.codecs.servo_map`` (docs/devices.md, "Servo drives"): it speaks
mm, mm/min and rpm, checks every value against the axis limits before anything is sent, and
holds no policy. Each motion follows the drive's pattern: setpoints (mode, target, speed,
acceleration) in one write, then the trigger in the control word; ``read`` polls the status.
A linear axis can also oscillate drive-side between two turning points (``oscillate``): the
drive reverses by itself and counts strokes, so a turning point costs no wire round trip."""

from __future__ import annotations

import math
from typing import Literal

import structlog

from drivers.codecs import servo_map
from drivers.codecs.servo_map import AxisMode, AxisStatus, Control, Oscillation
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
    async def set_velocity(
        self, speed: float, acceleration: float | None = None, *, urgent: bool = False
    ) -> None:
        """Velocity mode: run at ``speed`` (signed, rpm or mm/min) until told otherwise.
        ``urgent``: both writes go ahead of every request queued on the bus."""
        self._check("speed", speed, -self.max_speed, self.max_speed)
        accel = self._acceleration(acceleration)
        await self._start(AxisMode.VELOCITY, 0.0, speed, accel, urgent=urgent)

    async def move_absolute(
        self,
        position_mm: float,
        speed: float,
        acceleration: float | None = None,
        *,
        urgent: bool = False,
    ) -> None:
        """Move to ``position_mm`` (linear axes, homed) at up to ``speed``. ``urgent``: both
        writes go ahead of every request queued on the bus."""
        self._check("position_mm", position_mm, self.min_position_mm, self.max_position_mm)
        self._check_position_move(position_mm)
        self._check("speed", speed, 0.0, self.max_speed, low_open=True)
        accel = self._acceleration(acceleration)
        await self._start(AxisMode.POSITION_ABSOLUTE, position_mm, speed, accel, urgent=urgent)

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

    async def oscillate(
        self,
        first_mm: float,
        second_mm: float,
        speed: float,
        strokes: int = 0,
        acceleration: float | None = None,
        *,
        urgent: bool = False,
    ) -> None:
        """Oscillate between two turning points (linear axes, homed): travel to ``first_mm``,
        then run ``strokes`` strokes between the two (0: until stopped), reversing drive-side
        at each; a stroke is a travel from one turning point to the other (the approach to the
        first one is not counted). ``speed`` (mm/min) is that of every pass until
        ``set_oscillation_speed``. The status shows ``oscillating`` and ``strokes_done``; every
        stop path (stop, disable, alarm, watchdog, limit, power loss) ends it at once. The
        drive refuses turning points outside travel (exception 3). ``urgent``: both writes go
        ahead of every request queued on the bus."""
        self._check_position_move(first_mm)  # a rotary axis has no turning points
        self._check("first_mm", first_mm, self.min_position_mm, self.max_position_mm)
        self._check("second_mm", second_mm, self.min_position_mm, self.max_position_mm)
        if abs(second_mm - first_mm) < 1 / servo_map.POSITION_SCALE:
            # Turning points one count apart or closer: no stroke to run.
            raise DeviceRangeError(
                self.name, "second_mm", second_mm, self.min_position_mm, self.max_position_mm
            )
        self._check("speed", speed, 0.0, self.max_speed, low_open=True)
        if not 0 <= strokes <= servo_map.MAX_STROKES:
            raise DeviceRangeError(self.name, "strokes", strokes, 0, servo_map.MAX_STROKES)
        accel = self._acceleration(acceleration)
        block = servo_map.encode_oscillation_block(
            Oscillation(first_mm, second_mm, speed, accel, strokes)
        )
        # The setpoints (FC 16) then the trigger (FC 6), holding the bus between them.
        await self.transport.write_sequence(
            self.unit,
            [
                (servo_map.HR_OSC_FIRST, block),
                (servo_map.HR_CONTROL, int(Control.ENABLE | Control.OSCILLATE)),
            ],
            urgent=urgent,
        )
        self._log.debug(
            "servo.oscillate", first_mm=first_mm, second_mm=second_mm, speed=speed,
            strokes=strokes,
        )

    async def set_oscillation_speed(self, speed: float, *, urgent: bool = False) -> None:
        """The speed (mm/min) of the next pass of a running oscillation: the drive takes it at
        the next reversal (one pass, one speed). Zero is refused (here and by the drive)."""
        self._check("speed", speed, 0.0, self.max_speed, low_open=True)
        await self.transport.write_registers(
            self.unit, servo_map.HR_OSC_SPEED, servo_map.encode_speed(speed), urgent=urgent
        )

    async def set_oscillation_strokes(self, strokes: int, *, urgent: bool = False) -> None:
        """The stroke count of a running oscillation, read by the drive at every reversal: a
        count at or below the strokes done ends it at the next turning point (0: until
        stopped)."""
        if not 0 <= strokes <= servo_map.MAX_STROKES:
            raise DeviceRangeError(self.name, "strokes", strokes, 0, servo_map.MAX_STROKES)
        await self.transport.write_register(
            self.unit, servo_map.HR_OSC_STROKES, servo_map.encode_strokes(strokes), urgent=urgent
        )

    async def stop(self, *, urgent: bool = False) -> None:
        """Decelerate to a stop at the commanded acceleration; the drive stays enabled.
        ``urgent``: ahead of every request queued on the bus (the one in flight first)."""
        await self._control(Control.ENABLE | Control.STOP, urgent=urgent)

    async def reset_alarm(self) -> None:
        """Clear a latched alarm (only once its cause is gone); the drive stays disabled."""
        await self._control(Control.ENABLE | Control.RESET_ALARM)

    # -- communication watchdog ---------------------------------------------------------------
    async def configure_comm_watchdog(self, timeout_s: float, fallback_speed: float = 0.0) -> None:
        """Arm the drive's communication watchdog (HR 10-12, one request): once no request
        has reached this drive for ``timeout_s`` (wall time; 0 switches it off), a linear
        axis decelerates to a stop and a rotary one runs at ``fallback_speed`` (rpm, signed;
        never a stop while the rod may be hot); both raise alarm code 7 (COMM_WATCHDOG).
        A linear axis has no fallback speed (it must be 0)."""
        if math.isnan(timeout_s) or not 0.0 <= timeout_s <= servo_map.MAX_COMM_WATCHDOG_S:
            raise DeviceRangeError(
                self.name, "comm_watchdog_s", timeout_s, 0.0, servo_map.MAX_COMM_WATCHDOG_S
            )
        if 0.0 < timeout_s < 1 / servo_map.COMM_WATCHDOG_SCALE:
            # It would round to 0 ms, which is "off": never switch a watchdog off by accident.
            raise DeviceRangeError(
                self.name, "comm_watchdog_s", timeout_s, 0.001, servo_map.MAX_COMM_WATCHDOG_S
            )
        limit = self.max_speed if self.motion == "rotary" else 0.0
        self._check("fallback_speed", fallback_speed, -limit, limit)
        await self.transport.write_registers(
            self.unit,
            servo_map.HR_COMM_WATCHDOG,
            servo_map.encode_watchdog_block(timeout_s, fallback_speed),
        )
        self._log.info(
            "servo.comm_watchdog", timeout_s=timeout_s, fallback_speed=fallback_speed
        )

    async def read_comm_watchdog(self) -> tuple[float, float]:
        """(timeout_s, fallback_speed) as the drive holds them."""
        words = await self.transport.read_holding(
            self.unit, servo_map.HR_COMM_WATCHDOG, servo_map.WATCHDOG_BLOCK_COUNT
        )
        return servo_map.decode_watchdog_block(words)

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
        self,
        mode: AxisMode,
        position_mm: float,
        velocity: float,
        acceleration: float,
        *,
        urgent: bool = False,
    ) -> None:
        block = servo_map.encode_motion_block(mode, position_mm, velocity, acceleration)
        # Setpoints (FC 16) then the start (FC 6), holding the bus between them: a queued
        # poll does not delay the start.
        await self.transport.write_sequence(
            self.unit,
            [
                (servo_map.HR_MODE, block),
                (servo_map.HR_CONTROL, int(Control.ENABLE | Control.START)),
            ],
            urgent=urgent,
        )
        self._log.debug("servo.start", mode=mode.name, target=position_mm, velocity=velocity)

    async def _control(self, word: Control, *, urgent: bool = False) -> None:
        await self.transport.write_register(
            self.unit, servo_map.HR_CONTROL, int(word), urgent=urgent
        )

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
