"""Alicat's Modbus RTU register map for mass-flow controllers: pure encoding and decoding.

Alicat numbers registers from 1; the wire carries 0-based PDU addresses, so every address
here is ``register - 1`` (``pdu(1010) == 1009``). 32-bit values are IEEE-754 floats (or the
32-bit status word), high word first. The map, which table each value lives in and the
special-command codes are in docs/devices.md, section "Mass-flow controllers: Alicat Modbus
RTU"; driver and simulator both use this module."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from drivers.codecs.registers import (
    WordOrder,
    float32_to_registers,
    registers_to_float32,
    registers_to_uint32,
    uint32_to_registers,
)

WORD_ORDER = WordOrder.HIGH_FIRST


def pdu(register: int) -> int:
    """Alicat's 1-based register number -> the 0-based address on the wire."""
    return register - 1


# Holding registers (function 3 to read, 6/16 to write).
COMMAND_ID = pdu(1000)  # reads back the result code of the last special command
COMMAND_ARGUMENT = pdu(1001)
SETPOINT = pdu(1010)  # float32, 1010-1011
# Gas number, status and readings (registers 1200-1210): input registers (function 4); the
# same addresses in the holding table mirror them read-only, except the gas number, which is
# writable there (writing it selects the gas, as Alicat's map allows).
GAS_NUMBER = pdu(1200)
STATUS = pdu(1201)  # uint32 status flags, 1201-1202
PRESSURE = pdu(1203)  # float32 psia
TEMPERATURE = pdu(1205)  # float32 C
VOLUMETRIC_FLOW = pdu(1207)  # float32, the device's flow unit (SLPM on this line)
MASS_FLOW = pdu(1209)  # float32, the device's flow unit (SLPM on this line)
READINGS_START = GAS_NUMBER
READINGS_COUNT = MASS_FLOW + 2 - GAS_NUMBER  # 11 registers: gas, status, 4 floats
MAP_SIZE = MASS_FLOW + 2  # registers every table must hold

MAX_GAS_NUMBER = 255  # the standard table plus COMPOSER mix slots 236-255


class SpecialCommand(IntEnum):
    """Command IDs written to register 1000, with their argument in 1001, in one write."""

    CHANGE_GAS = 1  # argument: gas number
    TARE = 4  # argument: 0 pressure, 1 absolute pressure, 2 volumetric flow
    VALVE = 6  # argument: a ValveSetting


class ValveSetting(IntEnum):
    CANCEL_HOLD = 0
    HOLD_CLOSED = 1
    HOLD_CURRENT = 2


class CommandResult(IntEnum):
    """What register 1000 reads after a special command."""

    SUCCESS = 0
    INVALID_COMMAND = 32769
    INVALID_SETTING = 32770
    UNSUPPORTED = 32771


# Status bits of the 32-bit word at 1201-1202 (bit 0 = least significant bit of 1202).
# Over- and underflow of one quantity share Alicat's ASCII mnemonic.
STATUS_BITS: dict[int, str] = {
    0: "TOV", 1: "TOV", 2: "VOV", 3: "VOV", 4: "MOV", 5: "MOV", 6: "POV", 7: "OVR",
    8: "HLD", 9: "ADC", 10: "EXH", 11: "OPL", 12: "TMF",
}  # fmt: skip
_STATUS_ENCODE: dict[str, int] = {
    "TOV": 0, "VOV": 2, "MOV": 4, "POV": 6, "OVR": 7, "HLD": 8, "ADC": 9, "EXH": 10,
    "OPL": 11, "TMF": 12,
}  # fmt: skip


class MapError(ValueError):
    """Registers that cannot be what the map says they are."""


@dataclass(frozen=True)
class Readings:
    gas_number: int
    status: frozenset[str]
    pressure_psia: float
    temperature_c: float
    volumetric_slpm: float
    mass_slpm: float


def encode_status(words: Iterable[str]) -> list[int]:
    value = 0
    for word in words:
        bit = _STATUS_ENCODE.get(word)
        if bit is None:
            raise MapError(f"status {word!r} has no bit in Alicat's Modbus map")
        value |= 1 << bit
    return uint32_to_registers(value, WORD_ORDER)


def decode_status(words: Sequence[int]) -> frozenset[str]:
    value = registers_to_uint32(list(words), WORD_ORDER)
    return frozenset(name for bit, name in STATUS_BITS.items() if value >> bit & 1)


def encode_float(value: float) -> list[int]:
    return float32_to_registers(value, WORD_ORDER)


def decode_float(words: Sequence[int]) -> float:
    return registers_to_float32(list(words), WORD_ORDER)


def encode_readings(readings: Readings) -> list[int]:
    """The 11 registers from GAS_NUMBER to the end of MASS_FLOW."""
    return [
        readings.gas_number,
        *encode_status(readings.status),
        *encode_float(readings.pressure_psia),
        *encode_float(readings.temperature_c),
        *encode_float(readings.volumetric_slpm),
        *encode_float(readings.mass_slpm),
    ]


def decode_readings(words: Sequence[int]) -> Readings:
    if len(words) != READINGS_COUNT:
        raise MapError(f"readings span {READINGS_COUNT} registers, got {len(words)}")

    def at(address: int) -> float:
        offset = address - READINGS_START
        value = decode_float(words[offset : offset + 2])
        if not math.isfinite(value):
            raise MapError(f"register {address + 1} holds a non-finite float")
        return value

    offset = STATUS - READINGS_START
    return Readings(
        gas_number=words[0],
        status=decode_status(words[offset : offset + 2]),
        pressure_psia=at(PRESSURE),
        temperature_c=at(TEMPERATURE),
        volumetric_slpm=at(VOLUMETRIC_FLOW),
        mass_slpm=at(MASS_FLOW),
    )


def command_registers(command: SpecialCommand, argument: int) -> list[int]:
    """The two registers written to COMMAND_ID in one function-16 request."""
    if not 0 <= argument <= 0xFFFF:
        raise MapError(f"command argument {argument} does not fit a register")
    return [int(command), argument]
