"""The diameter gauge's ASCII command set (docs/devices.md, "Diameter gauge"): pure framing.

A laser micrometer on a point-to-point serial line; requests and replies end in CR (the
transport adds and strips it). ``M`` measures: ``D +0030.00 OK`` (a valid reading) or
``D +0000.00 ERR`` (no valid reading: out of range, nothing in the beam, or a gauge fault).
``ID`` identifies: ``ID <model>,<firmware>``. Anything else: ``ER,<code>``."""

from __future__ import annotations

import re
from dataclasses import dataclass

MEASURE = "M"
IDENTIFY = "ID"

ERROR_UNKNOWN_COMMAND = 1
ERROR_SYNTAX = 2  # a known command with trailing garbage

VALID = "OK"
INVALID = "ERR"
FIELD_DIGITS = (4, 2)  # +DDDD.dd: the widest value the gauge shows, at 0.01 mm
_MEASUREMENT = re.compile(r"^D ([+-]\d{4}\.\d{2}) (OK|ERR)$")
_IDENTITY = re.compile(r"^ID (\S.*)$")
_ERROR = re.compile(r"^ER,(\d{2})$")


@dataclass(frozen=True)
class GaugeReading:
    """One measurement: ``diameter_mm`` is None when the gauge has no valid reading."""

    diameter_mm: float | None
    valid: bool


class GaugeFrameError(ValueError):
    """A reply that is not a frame of this command set."""


class GaugeRefusedError(GaugeFrameError):
    """The gauge answered ``ER,<code>``: it refused the request."""

    def __init__(self, code: int) -> None:
        super().__init__(f"gauge error reply ER,{code:02d}")
        self.code = code


# -- replies (the simulator's side) ------------------------------------------------------------
def format_value(diameter_mm: float) -> str:
    """``+DDDD.dd``: sign, four integer digits, two decimals (0.01 mm)."""
    whole, decimals = FIELD_DIGITS
    width = whole + decimals + 2  # sign and point
    text = f"{diameter_mm:+0{width}.{decimals}f}"
    if len(text) != width:
        raise ValueError(f"{diameter_mm} does not fit the gauge's display field")
    return text


def encode_measurement(reading: GaugeReading) -> str:
    if reading.valid and reading.diameter_mm is not None:
        return f"D {format_value(reading.diameter_mm)} {VALID}"
    return f"D {format_value(0.0)} {INVALID}"


def encode_identity(identity: str) -> str:
    return f"{IDENTIFY} {identity}"


def encode_error(code: int) -> str:
    return f"ER,{code:02d}"


# -- replies (the driver's side) ---------------------------------------------------------------
def _raise_if_error(line: str) -> None:
    error = _ERROR.match(line)
    if error:
        raise GaugeRefusedError(int(error.group(1)))


def decode_measurement(line: str) -> GaugeReading:
    """Parse the reply to ``M``; raises GaugeFrameError on anything else."""
    _raise_if_error(line)
    match = _MEASUREMENT.match(line)
    if not match:
        raise GaugeFrameError(f"not a measurement frame: {line[:40]!r}")
    if match.group(2) == INVALID:
        return GaugeReading(diameter_mm=None, valid=False)
    return GaugeReading(diameter_mm=float(match.group(1)), valid=True)


def decode_identity(line: str) -> str:
    """Parse the reply to ``ID``: the model and firmware text."""
    _raise_if_error(line)
    match = _IDENTITY.match(line)
    if not match:
        raise GaugeFrameError(f"not an identity frame: {line[:40]!r}")
    return match.group(1)
