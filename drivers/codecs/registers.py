"""Pure conversions between 16-bit Modbus registers and engineering values.

Word order is explicit on every 32-bit helper: every map in docs/devices.md states it, and
the same helpers serve drivers and simulators so the two can never disagree silently."""

from __future__ import annotations

import struct
from enum import Enum


class WordOrder(Enum):
    HIGH_FIRST = "high-first"  # big-endian words (Alicat, our RF generator, our drives)
    LOW_FIRST = "low-first"


def _split(raw: bytes, order: WordOrder) -> list[int]:
    hi, lo = struct.unpack(">HH", raw)
    return [hi, lo] if order is WordOrder.HIGH_FIRST else [lo, hi]


def _join(words: list[int] | tuple[int, ...], order: WordOrder) -> bytes:
    if len(words) != 2:
        raise ValueError(f"a 32-bit value spans 2 registers, got {len(words)}")
    hi, lo = (words[0], words[1]) if order is WordOrder.HIGH_FIRST else (words[1], words[0])
    return struct.pack(">HH", hi, lo)


def float32_to_registers(value: float, order: WordOrder = WordOrder.HIGH_FIRST) -> list[int]:
    return _split(struct.pack(">f", value), order)


def registers_to_float32(
    words: list[int] | tuple[int, ...], order: WordOrder = WordOrder.HIGH_FIRST
) -> float:
    result: float = struct.unpack(">f", _join(words, order))[0]
    return result


def int32_to_registers(value: int, order: WordOrder = WordOrder.HIGH_FIRST) -> list[int]:
    return _split(struct.pack(">i", value), order)


def registers_to_int32(
    words: list[int] | tuple[int, ...], order: WordOrder = WordOrder.HIGH_FIRST
) -> int:
    result: int = struct.unpack(">i", _join(words, order))[0]
    return result


def uint32_to_registers(value: int, order: WordOrder = WordOrder.HIGH_FIRST) -> list[int]:
    return _split(struct.pack(">I", value), order)


def registers_to_uint32(
    words: list[int] | tuple[int, ...], order: WordOrder = WordOrder.HIGH_FIRST
) -> int:
    result: int = struct.unpack(">I", _join(words, order))[0]
    return result


def int16_to_register(value: int) -> int:
    """Two's complement of a signed 16-bit value, as a register holds it."""
    if not -0x8000 <= value <= 0x7FFF:
        raise ValueError(f"{value} does not fit a signed 16-bit register")
    return value & 0xFFFF


def register_to_int16(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


def scaled_to_register(value: float, scale: float) -> int:
    """Unsigned 16-bit register holding value * scale (e.g. kW x 10)."""
    raw = round(value * scale)
    if not 0 <= raw <= 0xFFFF:
        raise ValueError(f"{value} x {scale} does not fit an unsigned 16-bit register")
    return raw


def register_to_scaled(word: int, scale: float) -> float:
    return word / scale


def bits_to_word(bits: dict[int, bool]) -> int:
    word = 0
    for bit, on in bits.items():
        if on:
            word |= 1 << bit
    return word


def word_bit(word: int, bit: int) -> bool:
    return bool(word >> bit & 1)
