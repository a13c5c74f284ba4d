"""Alicat ASCII serial protocol: pure formatting and parsing of request and reply lines.

One module serves both sides so the driver and the simulator cannot drift apart: the driver
builds requests and parses replies, the simulator parses requests and formats replies. Lines
here carry no terminator (the transport adds and strips the CR). The command set, the frame
layout and the choices made where Alicat's documents leave room are in docs/devices.md,
section "Mass-flow controllers: Alicat ASCII"."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum

UNIT_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
UNKNOWN_COMMAND_REPLY = "?"
GAS_REGISTER = 46
CONTROL_POINT_REGISTER = 122
GAS_NUMBER_MASK = 0x1FF  # register 46 keeps the gas number in its low 9 bits
MAX_GAS_NUMBER = 255  # the standard table plus COMPOSER mix slots 236-255
INTEGER_SETPOINT_FULL_SCALE = 64000  # `A32000` sets half of full scale
SLPM_UNIT_CODE = 7  # Alicat engineering-unit code of SLPM, used in `LS` replies
SLPM_UNIT_LABEL = "SLPM"

# Alicat's standard gas table (gas number -> the short name a data frame shows); only the
# head of the table: a number beyond it is shown as the configured label or `G<n>`.
GAS_LABELS: dict[int, str] = {
    0: "Air", 1: "Ar", 2: "CH4", 3: "CO", 4: "CO2", 5: "C2H6", 6: "H2", 7: "He",
    8: "N2", 9: "N2O", 10: "Ne", 11: "O2", 12: "C3H8", 13: "nC4H10", 14: "C2H2",
    15: "C2H4", 16: "iC4H10", 17: "Kr", 18: "Xe", 19: "SF6",
}  # fmt: skip

# Status words a data frame may end with. Ours are emitted in this order: HLD and LCK first,
# over-ranges last, because common clients strip trailing over-range words before LCK.
STATUS_ORDER: tuple[str, ...] = (
    "ADC", "EXH", "HLD", "LCK", "OPL", "OVR", "TMF", "MOV", "VOV", "POV", "TOV",
)  # fmt: skip
STATUS_WORDS: frozenset[str] = frozenset(STATUS_ORDER)

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_REGISTER_REPLY = re.compile(r"^([A-Z])\s+(\d+)\s*=\s*(-?\d+)$")
_REGISTER_WRITE = re.compile(r"^(?:\$\$)?W(\d+)=(-?\d+)$")
_REGISTER_READ = re.compile(r"^(?:\$\$)?R(\d+)$")


class AsciiFormatError(ValueError):
    """A line does not have the shape its command expects."""


class Command(Enum):
    POLL = "poll"
    SETPOINT = "setpoint"  # S<float>, S <float>, or the bare integer form (64000 = FS)
    QUERY_SETPOINT = "query-setpoint"  # LS
    SET_SETPOINT_LS = "set-setpoint-ls"  # LS <float>
    SELECT_GAS = "select-gas"  # G<n> / G <n>
    READ_REGISTER = "read-register"  # $$R<n> / R<n>
    WRITE_REGISTER = "write-register"  # $$W<n>=<v> / W<n>=<v>
    HOLD_CLOSED = "hold-closed"  # HC
    HOLD_CURRENT = "hold-current"  # HP, $$H
    CANCEL_HOLD = "cancel-hold"  # C, $$C
    LOCK = "lock"  # L, $$L
    UNLOCK = "unlock"  # U, $$U
    TARE = "tare"  # V, $$V, P, PC, $$PC (no effect in the simulator)


@dataclass(frozen=True)
class Request:
    unit: str
    command: Command
    value: float | None = None  # setpoint (slpm), or an integer setpoint's fraction of FS
    register: int | None = None
    register_value: int | None = None
    integer_setpoint: bool = False


@dataclass(frozen=True)
class DataFrame:
    """One poll reply: unit, pressure (psia), temperature (C), volumetric and mass flow and
    setpoint (the device's engineering units: SLPM on this line), gas label, status words."""

    unit: str
    pressure_psia: float
    temperature_c: float
    volumetric_slpm: float
    mass_slpm: float
    setpoint_slpm: float
    gas: str
    status: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SetpointReply:
    """The reply to `LS`: the live setpoint and the requested one."""

    unit: str
    current_slpm: float
    requested_slpm: float
    unit_code: int
    unit_label: str


# -- requests (driver side) ----------------------------------------------------------------
def _check_unit(unit: str) -> str:
    if len(unit) != 1 or unit not in UNIT_IDS:
        raise ValueError(f"an Alicat unit id is one letter A-Z, got {unit!r}")
    return unit


def poll(unit: str) -> str:
    return _check_unit(unit)


def set_setpoint(unit: str, value: float) -> str:
    return f"{_check_unit(unit)}S{value:.2f}"


def query_setpoint(unit: str) -> str:
    return f"{_check_unit(unit)}LS"


def write_register(unit: str, register: int, value: int) -> str:
    return f"{_check_unit(unit)}$$W{register}={value}"


def read_register(unit: str, register: int) -> str:
    return f"{_check_unit(unit)}$$R{register}"


def select_gas(unit: str, number: int) -> str:
    """Gas select by register 46, the form every firmware since 5v understands."""
    return write_register(unit, GAS_REGISTER, number)


def hold_closed(unit: str) -> str:
    return f"{_check_unit(unit)}HC"


def cancel_hold(unit: str) -> str:
    return f"{_check_unit(unit)}C"


# -- requests (simulator side) -------------------------------------------------------------
_FIXED: dict[str, Command] = {
    "": Command.POLL,
    "LS": Command.QUERY_SETPOINT,
    "HC": Command.HOLD_CLOSED,
    "HP": Command.HOLD_CURRENT,
    "$$H": Command.HOLD_CURRENT,
    "C": Command.CANCEL_HOLD,
    "$$C": Command.CANCEL_HOLD,
    "L": Command.LOCK,
    "$$L": Command.LOCK,
    "U": Command.UNLOCK,
    "$$U": Command.UNLOCK,
    "V": Command.TARE,
    "$$V": Command.TARE,
    "P": Command.TARE,
    "PC": Command.TARE,
    "$$PC": Command.TARE,
}


def _float_arg(text: str) -> float | None:
    text = text.strip()
    if not _NUMBER.match(text):
        return None
    return float(text)


def parse_request(line: str) -> Request | None:
    """The request a line carries, or None when the command is unknown (the device answers
    `?`). Commands are case-insensitive, as on the device."""
    line = line.strip()
    if not line or line[0].upper() not in UNIT_IDS:
        return None
    unit, body = line[0].upper(), line[1:].upper()
    if body in _FIXED:
        return Request(unit, _FIXED[body])
    if body.isdigit():
        fraction = int(body) / INTEGER_SETPOINT_FULL_SCALE
        return Request(unit, Command.SETPOINT, value=fraction, integer_setpoint=True)
    if body.startswith("LS"):
        value = _float_arg(body[2:])
        return None if value is None else Request(unit, Command.SET_SETPOINT_LS, value=value)
    if body.startswith("S"):
        value = _float_arg(body[1:])
        return None if value is None else Request(unit, Command.SETPOINT, value=value)
    if body.startswith("G") and body[1:].strip().isdigit():
        return Request(unit, Command.SELECT_GAS, register_value=int(body[1:]))
    if match := _REGISTER_READ.match(body):
        return Request(unit, Command.READ_REGISTER, register=int(match[1]))
    if match := _REGISTER_WRITE.match(body):
        return Request(
            unit, Command.WRITE_REGISTER, register=int(match[1]), register_value=int(match[2])
        )
    return None


# -- replies (simulator side) --------------------------------------------------------------
def _signed(value: float) -> str:
    return f"{value:+07.2f}"


def format_data_frame(frame: DataFrame) -> str:
    """`A +014.70 +025.00 +000.00 +000.00 000.00 N2 [status...]`: readings signed with 2
    decimals, the setpoint unsigned (as domain.md's example frame)."""
    fields = [
        frame.unit,
        _signed(frame.pressure_psia),
        _signed(frame.temperature_c),
        _signed(frame.volumetric_slpm),
        _signed(frame.mass_slpm),
        f"{frame.setpoint_slpm:06.2f}",
        frame.gas,
    ]
    fields += [word for word in STATUS_ORDER if word in frame.status]
    return " ".join(fields)


def format_register_reply(unit: str, register: int, value: int) -> str:
    """`A   046 = 8`: the register echo Alicat firmware gives to `$$R` and `$$W`."""
    return f"{unit}   {register:03d} = {value}"


def format_setpoint_reply(reply: SetpointReply) -> str:
    """`A +005.00 +005.00 7 SLPM`: unit, live setpoint, requested setpoint, unit code, label."""
    return (
        f"{reply.unit} {_signed(reply.current_slpm)} {_signed(reply.requested_slpm)} "
        f"{reply.unit_code} {reply.unit_label}"
    )


def format_gas_reply(unit: str, number: int, label: str) -> str:
    """`A 8 N2`: the reply to `G<n>` (gas number and its short name)."""
    return f"{unit} {number} {label}"


def gas_label(number: int, configured: tuple[int, str] | None = None) -> str:
    """The short name a frame shows for a gas number: the configured label for the
    configured number (e.g. a custom SiCl4 entry), else Alicat's table, else `G<n>`."""
    if configured is not None and configured[0] == number:
        return configured[1]
    return GAS_LABELS.get(number, f"G{number}")


# -- replies (driver side) -----------------------------------------------------------------
def is_rejection(line: str) -> bool:
    """True for `?` and for the `A ?` form newer firmware uses."""
    parts = line.split()
    return bool(parts) and parts[-1] == UNKNOWN_COMMAND_REPLY


def _number(text: str, what: str, line: str) -> float:
    if not _NUMBER.match(text):
        raise AsciiFormatError(f"{what} {text!r} is not a number in {line!r}")
    value = float(text)
    if not math.isfinite(value):
        raise AsciiFormatError(f"{what} is not finite in {line!r}")
    return value


_FRAME_NUMBERS = ("pressure", "temperature", "volumetric flow", "mass flow", "setpoint")

# A data frame as our devices send it (single spaces, ASCII digits, known status words) in one
# pattern: a poll reply is parsed on every poll of every MFC, and one match costs a fraction
# of the field-by-field parse. Whatever it does not take goes to that parse, which takes or
# refuses it and says why; so the pattern accepts only lines that parse accepts, to the same
# frame (tests/unit/test_alicat_ascii.py). An integer part of at most 20 digits cannot make
# an infinite float; the gas must not read as a number (\d, as in _NUMBER).
_FRAME_FIELD = r"([+-]?(?:[0-9]{1,20}(?:\.[0-9]*)?|\.[0-9]+))"
_DATA_FRAME = re.compile(
    rf"([A-Z]) {_FRAME_FIELD} {_FRAME_FIELD} {_FRAME_FIELD} {_FRAME_FIELD} {_FRAME_FIELD} "
    r"(?![+-]?(?:\d+(?:\.\d*)?|\.\d+)(?: |$))(\S+)"
    rf"((?: (?:{'|'.join(STATUS_ORDER)}))*)"
)


def parse_data_frame(line: str) -> DataFrame:
    match = _DATA_FRAME.fullmatch(line)
    if match is None:
        return parse_data_frame_by_fields(line)
    unit, pressure, temperature, volumetric, mass, setpoint, gas, status = match.groups()
    return DataFrame(
        unit, float(pressure), float(temperature), float(volumetric), float(mass),
        float(setpoint), gas, frozenset(status.split()),
    )


def parse_data_frame_by_fields(line: str) -> DataFrame:
    """The data frame, field by field; an ``AsciiFormatError`` says which field is wrong."""
    parts = line.split()
    if len(parts) < 7:
        raise AsciiFormatError(f"data frame needs 7 fields, got {len(parts)}: {line!r}")
    unit = parts[0]
    if len(unit) != 1 or unit not in UNIT_IDS:
        raise AsciiFormatError(f"bad unit id {unit!r} in {line!r}")
    pressure, temperature, volumetric, mass, setpoint = (
        _number(text, name, line) for text, name in zip(parts[1:6], _FRAME_NUMBERS, strict=True)
    )
    gas = parts[6]
    if _NUMBER.match(gas):
        raise AsciiFormatError(f"gas field {gas!r} is numeric (extra column?) in {line!r}")
    status = parts[7:]
    unknown = [word for word in status if word not in STATUS_WORDS]
    if unknown:
        raise AsciiFormatError(f"unknown status words {unknown} in {line!r}")
    return DataFrame(
        unit, pressure, temperature, volumetric, mass, setpoint, gas, frozenset(status)
    )


def parse_register_reply(line: str) -> tuple[str, int, int]:
    """(unit, register, value) from `A   046 = 8`."""
    match = _REGISTER_REPLY.match(line.strip())
    if match is None:
        raise AsciiFormatError(f"not a register reply: {line!r}")
    return match[1], int(match[2]), int(match[3])


def parse_setpoint_reply(line: str) -> SetpointReply:
    parts = line.split()
    if len(parts) != 5 or len(parts[0]) != 1 or parts[0] not in UNIT_IDS:
        raise AsciiFormatError(f"not a setpoint reply: {line!r}")
    if not parts[3].isdigit():
        raise AsciiFormatError(f"bad unit code in {line!r}")
    return SetpointReply(
        unit=parts[0],
        current_slpm=_number(parts[1], "current setpoint", line),
        requested_slpm=_number(parts[2], "requested setpoint", line),
        unit_code=int(parts[3]),
        unit_label=parts[4],
    )
