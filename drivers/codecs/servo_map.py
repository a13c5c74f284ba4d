"""The servo drives' register map (docs/devices.md, "Servo drives"): pure encode / decode.

One map serves the spindle (rotary) and the carriage and torch slide (linear). Positions are
int32 in 0.001 mm (a rotary axis: 0.001 degree of shaft angle), velocities int32 in 0.01 rpm or
0.01 mm/min, accelerations and the jog and oscillation speeds uint32 in 0.01 rpm/s,
0.01 mm/s^2 or 0.01 mm/min;
every 32-bit value spans two registers, high word first. The driver and the simulator both use
this module, so they cannot disagree about an address, a bit or a scale."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag

from drivers.codecs.registers import (
    WordOrder,
    int16_to_register,
    int32_to_registers,
    register_to_int16,
    registers_to_int32,
    registers_to_uint32,
    uint32_to_registers,
)

WORD_ORDER = WordOrder.HIGH_FIRST

# -- holding registers (function 3 to read, 6 / 16 to write) ---------------------------------
HR_CONTROL = 0  # control word, bits in Control
HR_MODE = 1  # operating mode, AxisMode
HR_TARGET_POSITION = 2  # int32, 2 registers: absolute position or relative distance
HR_TARGET_VELOCITY = 4  # int32, 2 registers: signed in velocity mode, magnitude otherwise
HR_ACCELERATION = 6  # uint32, 2 registers: 0 = the drive's configured maximum
HR_JOG_SPEED = 8  # uint32, 2 registers
HR_COMM_WATCHDOG = 10  # uint16, ms without a request before the watchdog acts; 0 = off
HR_WATCHDOG_VELOCITY = 11  # int32, 2 registers: a rotary axis's speed once the watchdog acts
# Drive-side oscillation (a linear axis): the drive travels to turning point 1, then reverses by
# itself at each turning point, counting strokes, so a turning point costs no wire round trip.
HR_OSC_FIRST = 13  # int32, 2 registers: turning point 1 (the first one travelled to)
HR_OSC_SECOND = 15  # int32, 2 registers: turning point 2
HR_OSC_SPEED = 17  # uint32, 2 registers: read at the start and at every reversal
HR_OSC_ACCELERATION = 19  # uint32, 2 registers: 0 = the drive's configured maximum
HR_OSC_STROKES = 21  # uint16: strokes to run, then stop at the turning point; 0 = until stopped
HOLDING_COUNT = 22
OSCILLATION_BLOCK_COUNT = HOLDING_COUNT - HR_OSC_FIRST  # HR 13-21, written in one request
OSC_SPEED_COUNT = 2  # HR 17-18 alone: the next pass's speed
MAX_STROKES = 0xFFFF
WATCHDOG_BLOCK_COUNT = 3  # HR 10-12, written in one request
COMM_WATCHDOG_SCALE = 1000.0  # counts (ms) per second
MAX_COMM_WATCHDOG_S = 0xFFFF / COMM_WATCHDOG_SCALE
MOTION_BLOCK_COUNT = HR_JOG_SPEED - HR_MODE  # HR 1-7: mode, position, velocity, acceleration

# -- input registers (function 4) --------------------------------------------------------------
IR_STATUS = 0  # status word, bits in Status
IR_ALARM_CODE = 1  # AlarmCode, 0 = none
IR_ACTUAL_POSITION = 2  # int32, 2 registers
IR_ACTUAL_VELOCITY = 4  # int32, 2 registers, signed
IR_FOLLOWING_ERROR = 6  # int16, 0.01 mm (rotary: 0.01 degree), actual - commanded
IR_LOAD = 7  # uint16, 0.1 % of rated torque
IR_ACTIVE_MODE = 8  # the mode the drive is running (or last ran), AxisMode
IR_STROKES_DONE = 9  # uint16: strokes completed by the oscillation running (or last run)
INPUT_COUNT = 10

POSITION_SCALE = 1000.0  # counts per mm (rotary: per degree)
VELOCITY_SCALE = 100.0  # counts per rpm or per mm/min
ACCELERATION_SCALE = 100.0  # counts per rpm/s or per mm/s^2
FOLLOWING_ERROR_SCALE = 100.0  # counts per mm (rotary: per degree)
LOAD_SCALE = 10.0  # counts per %


class Control(IntFlag):
    """Control word (HR 0). ENABLE is a level; the other bits are commands (see the map)."""

    ENABLE = 1 << 0
    START = 1 << 1
    STOP = 1 << 2
    HOME = 1 << 3
    RESET_ALARM = 1 << 4
    JOG_POSITIVE = 1 << 5
    JOG_NEGATIVE = 1 << 6
    OSCILLATE = 1 << 7  # start the oscillation set in HR 13-21


COMMAND_BITS = (
    Control.START
    | Control.STOP
    | Control.HOME
    | Control.RESET_ALARM
    | Control.JOG_POSITIVE
    | Control.JOG_NEGATIVE
    | Control.OSCILLATE
)
CONTROL_MASK = Control.ENABLE | COMMAND_BITS


class Status(IntFlag):
    """Status word (IR 0)."""

    ENABLED = 1 << 0
    MOVING = 1 << 1
    IN_POSITION = 1 << 2  # position reached / at speed / homing done, and no command pending
    HOMED = 1 << 3
    LIMIT_POSITIVE = 1 << 4  # a motion was stopped at the positive end of travel
    LIMIT_NEGATIVE = 1 << 5  # a motion was stopped at the negative end of travel
    ALARM = 1 << 6
    POWERED = 1 << 7  # the power stage has power (off on E-stop)
    OSCILLATING = 1 << 8  # a drive-side oscillation is running (cleared by every stop path)


STATUS_MASK = 0x1FF  # bits 9-15 are reserved and read 0


class AxisMode(IntEnum):
    NONE = 0
    VELOCITY = 1
    POSITION_ABSOLUTE = 2
    POSITION_RELATIVE = 3
    HOMING = 4
    JOG = 5
    OSCILLATE = 6  # reported while oscillating; started by the control word's bit 7


class AlarmCode(IntEnum):
    NONE = 0
    OVERCURRENT = 1
    OVERVOLTAGE = 2
    UNDERVOLTAGE = 3
    OVERLOAD = 4
    FOLLOWING_ERROR = 5
    ENCODER = 6
    COMM_WATCHDOG = 7  # no request for comm_watchdog_ms: linear axes stopped, rotary at fallback


@dataclass(frozen=True)
class AxisStatus:
    """One reading of a drive, in engineering units.

    ``position_mm`` is the axis position in mm (a rotary axis: shaft angle in degrees);
    ``velocity`` is in rpm (rotary) or mm/min (linear), signed."""

    enabled: bool
    moving: bool
    in_position: bool
    homed: bool
    limit_positive: bool
    limit_negative: bool
    alarm: bool
    alarm_code: int
    position_mm: float
    velocity: float
    mode: AxisMode
    powered: bool = True
    following_error_mm: float = 0.0
    load_percent: float = 0.0
    oscillating: bool = False
    strokes_done: int = 0  # of the oscillation running, or the last one (0 before any)


# -- scalar conversions ------------------------------------------------------------------------
def _int32_counts(value: float, scale: float) -> int:
    raw = round(value * scale)
    if not -(2**31) <= raw < 2**31:
        raise ValueError(f"{value} x {scale:g} does not fit a signed 32-bit value")
    return raw


def _uint32_counts(value: float, scale: float) -> int:
    raw = round(value * scale)
    if not 0 <= raw < 2**32:
        raise ValueError(f"{value} x {scale:g} does not fit an unsigned 32-bit value")
    return raw


def encode_position(position_mm: float) -> list[int]:
    return int32_to_registers(_int32_counts(position_mm, POSITION_SCALE), WORD_ORDER)


def decode_position(words: list[int] | tuple[int, ...]) -> float:
    return registers_to_int32(words, WORD_ORDER) / POSITION_SCALE


def encode_velocity(velocity: float) -> list[int]:
    return int32_to_registers(_int32_counts(velocity, VELOCITY_SCALE), WORD_ORDER)


def decode_velocity(words: list[int] | tuple[int, ...]) -> float:
    return registers_to_int32(words, WORD_ORDER) / VELOCITY_SCALE


def encode_acceleration(acceleration: float) -> list[int]:
    return uint32_to_registers(_uint32_counts(acceleration, ACCELERATION_SCALE), WORD_ORDER)


def decode_acceleration(words: list[int] | tuple[int, ...]) -> float:
    return registers_to_uint32(words, WORD_ORDER) / ACCELERATION_SCALE


def encode_speed(speed: float) -> list[int]:
    """An unsigned speed (the jog speed): uint32, 0.01 rpm or 0.01 mm/min."""
    return uint32_to_registers(_uint32_counts(speed, VELOCITY_SCALE), WORD_ORDER)


def decode_speed(words: list[int] | tuple[int, ...]) -> float:
    return registers_to_uint32(words, WORD_ORDER) / VELOCITY_SCALE


def encode_following_error(error_mm: float) -> int:
    """int16 in 0.01 mm, saturated: a runaway error reads as the register's extreme."""
    raw = max(-0x8000, min(0x7FFF, round(error_mm * FOLLOWING_ERROR_SCALE)))
    return int16_to_register(raw)


def decode_following_error(word: int) -> float:
    return register_to_int16(word) / FOLLOWING_ERROR_SCALE


def encode_load(percent: float) -> int:
    return max(0, min(0xFFFF, round(percent * LOAD_SCALE)))


def decode_load(word: int) -> float:
    return word / LOAD_SCALE


def encode_comm_watchdog_ms(timeout_s: float) -> int:
    """The watchdog timeout in whole ms (0 = off); a non-zero timeout never rounds to off."""
    raw = round(timeout_s * COMM_WATCHDOG_SCALE)
    if timeout_s < 0 or raw > 0xFFFF or (timeout_s > 0 and raw == 0):
        raise ValueError(f"a watchdog of {timeout_s} s does not fit 1-65535 ms (or 0 = off)")
    return raw


def decode_comm_watchdog_s(word: int) -> float:
    return word / COMM_WATCHDOG_SCALE


# -- register blocks ---------------------------------------------------------------------------
def encode_watchdog_block(timeout_s: float, fallback_velocity: float) -> list[int]:
    """HR 10-12 in one write: watchdog timeout (ms), then the rotary fallback velocity."""
    return [encode_comm_watchdog_ms(timeout_s), *encode_velocity(fallback_velocity)]


@dataclass(frozen=True)
class Oscillation:
    """HR 13-21: what the drive runs on the oscillate command (mm, mm/min, mm/s^2)."""

    first_mm: float
    second_mm: float
    speed: float
    acceleration: float  # 0 = the axis maximum
    strokes: int  # 0 = until stopped


def encode_strokes(strokes: int) -> int:
    if not 0 <= strokes <= MAX_STROKES:
        raise ValueError(f"a stroke count of {strokes} does not fit 0-{MAX_STROKES}")
    return strokes


def encode_oscillation_block(oscillation: Oscillation) -> list[int]:
    """HR 13-21 in one write: turning points 1 and 2, speed, acceleration, strokes."""
    return [
        *encode_position(oscillation.first_mm),
        *encode_position(oscillation.second_mm),
        *encode_speed(oscillation.speed),
        *encode_acceleration(oscillation.acceleration),
        encode_strokes(oscillation.strokes),
    ]


def decode_oscillation_block(words: list[int] | tuple[int, ...]) -> Oscillation:
    if len(words) != OSCILLATION_BLOCK_COUNT:
        raise ValueError(f"expected {OSCILLATION_BLOCK_COUNT} registers, got {len(words)}")
    return Oscillation(
        first_mm=decode_position(words[0:2]),
        second_mm=decode_position(words[2:4]),
        speed=decode_speed(words[4:6]),
        acceleration=decode_acceleration(words[6:8]),
        strokes=words[8],
    )


def decode_watchdog_block(words: list[int] | tuple[int, ...]) -> tuple[float, float]:
    """(timeout_s, fallback velocity) from HR 10-12."""
    if len(words) != WATCHDOG_BLOCK_COUNT:
        raise ValueError(f"expected {WATCHDOG_BLOCK_COUNT} registers, got {len(words)}")
    return decode_comm_watchdog_s(words[0]), decode_velocity(words[1:3])


def encode_motion_block(
    mode: AxisMode, position_mm: float, velocity: float, acceleration: float
) -> list[int]:
    """HR 1-7 in one write: mode, target position, target velocity, acceleration."""
    return [
        int(mode),
        *encode_position(position_mm),
        *encode_velocity(velocity),
        *encode_acceleration(acceleration),
    ]


def encode_status_word(status: AxisStatus) -> int:
    flags = Status(0)
    for flag, on in (
        (Status.ENABLED, status.enabled),
        (Status.MOVING, status.moving),
        (Status.IN_POSITION, status.in_position),
        (Status.HOMED, status.homed),
        (Status.LIMIT_POSITIVE, status.limit_positive),
        (Status.LIMIT_NEGATIVE, status.limit_negative),
        (Status.ALARM, status.alarm),
        (Status.POWERED, status.powered),
        (Status.OSCILLATING, status.oscillating),
    ):
        if on:
            flags |= flag
    return int(flags)


def encode_inputs(status: AxisStatus) -> list[int]:
    """The whole input-register image, IR 0 to IR 9."""
    words = [0] * INPUT_COUNT
    words[IR_STATUS] = encode_status_word(status)
    words[IR_ALARM_CODE] = status.alarm_code
    words[IR_ACTUAL_POSITION : IR_ACTUAL_POSITION + 2] = encode_position(status.position_mm)
    words[IR_ACTUAL_VELOCITY : IR_ACTUAL_VELOCITY + 2] = encode_velocity(status.velocity)
    words[IR_FOLLOWING_ERROR] = encode_following_error(status.following_error_mm)
    words[IR_LOAD] = encode_load(status.load_percent)
    words[IR_ACTIVE_MODE] = int(status.mode)
    words[IR_STROKES_DONE] = min(status.strokes_done, MAX_STROKES)
    return words


def decode_inputs(words: list[int] | tuple[int, ...]) -> AxisStatus:
    """IR 0 to IR 9 as read in one request; raises ValueError on an unknown mode."""
    if len(words) != INPUT_COUNT:
        raise ValueError(f"expected {INPUT_COUNT} input registers, got {len(words)}")
    flags = Status(words[IR_STATUS] & STATUS_MASK)
    try:
        mode = AxisMode(words[IR_ACTIVE_MODE])
    except ValueError as exc:
        raise ValueError(f"unknown drive mode {words[IR_ACTIVE_MODE]}") from exc
    return AxisStatus(
        enabled=Status.ENABLED in flags,
        moving=Status.MOVING in flags,
        in_position=Status.IN_POSITION in flags,
        homed=Status.HOMED in flags,
        limit_positive=Status.LIMIT_POSITIVE in flags,
        limit_negative=Status.LIMIT_NEGATIVE in flags,
        alarm=Status.ALARM in flags,
        alarm_code=words[IR_ALARM_CODE],
        position_mm=decode_position(words[IR_ACTUAL_POSITION : IR_ACTUAL_POSITION + 2]),
        velocity=decode_velocity(words[IR_ACTUAL_VELOCITY : IR_ACTUAL_VELOCITY + 2]),
        mode=mode,
        powered=Status.POWERED in flags,
        following_error_mm=decode_following_error(words[IR_FOLLOWING_ERROR]),
        load_percent=decode_load(words[IR_LOAD]),
        oscillating=Status.OSCILLATING in flags,
        strokes_done=words[IR_STROKES_DONE],
    )
