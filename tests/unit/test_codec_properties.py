"""Property tests (issue 11: a device's reply never crashes the controller): every decoder in
``drivers/codecs`` turns any reply (random registers of any count and value, random text,
truncated and corrupted frames, NaN and out-of-range values) into a valid reading or the
codec's typed error, the one its driver turns into a DeviceProtocolError; never another
exception, and never a reading that holds a NaN or an infinity."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.codecs import (
    alicat_ascii,
    diameter_gauge_ascii,
    rf_generator_map,
    safety_io_map,
    servo_map,
)
from drivers.codecs import alicat_modbus_map as alicat_mb
from drivers.codecs.alicat_ascii import AsciiFormatError, DataFrame
from drivers.codecs.diameter_gauge_ascii import GaugeFrameError, GaugeReading
from drivers.codecs.registers import float32_to_registers

EXAMPLES = int(os.environ.get("POVD_PROPERTY_EXAMPLES", "100"))
PROPERTY = settings(deadline=None, max_examples=EXAMPLES)

WORD = st.integers(min_value=0, max_value=0xFFFF)
# Registers as a float32 the device never sends: NaN, infinities, huge and tiny values.
ODD_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, 3.4e38, -3.4e38, 1e-45, -0.0])


def odd_float_words(count: int) -> st.SearchStrategy[list[int]]:
    """`count` registers with NaN-like float pairs spliced in among random words."""
    return st.lists(st.one_of(WORD.map(lambda w: [w]),
                              ODD_FLOATS.map(float32_to_registers)),
                    min_size=1, max_size=count).map(
        lambda chunks: [w for chunk in chunks for w in chunk][:count])


def register_blocks(expected: int) -> st.SearchStrategy[list[int]]:
    """The expected count (most often) or any other; random words or NaN-bearing floats."""
    return st.one_of(
        st.lists(WORD, min_size=expected, max_size=expected),
        odd_float_words(expected),
        st.lists(WORD, max_size=2 * expected + 2),  # truncated or too long
    )


def finite_everywhere(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if is_dataclass(value) and not isinstance(value, type):
        return all(finite_everywhere(getattr(value, f.name)) for f in fields(value))
    if isinstance(value, tuple | list | frozenset):
        return all(finite_everywhere(v) for v in value)
    return True


def decoded_or_refused(decode: Callable[[Any], Any], reply: Any,
                       refusal: type[Exception]) -> None:
    try:
        value = decode(reply)
    except refusal:
        return
    assert finite_everywhere(value), value


# --------------------------------------------------------------------------------------------
# Modbus register maps (their drivers turn a ValueError into a DeviceProtocolError)

MODBUS_DECODERS: list[tuple[str, Callable[[Any], Any], int]] = [
    ("alicat readings", alicat_mb.decode_readings, alicat_mb.READINGS_COUNT),
    ("rf status", rf_generator_map.decode_status, rf_generator_map.IR_SETPOINT_ACTUAL + 1),
    ("safety inputs", safety_io_map.decode_inputs, safety_io_map.INPUT_COUNT),
    ("servo inputs", servo_map.decode_inputs, servo_map.INPUT_COUNT),
    ("servo oscillation", servo_map.decode_oscillation_block, servo_map.OSCILLATION_BLOCK_COUNT),
    ("servo watchdog", servo_map.decode_watchdog_block, servo_map.WATCHDOG_BLOCK_COUNT),
    ("servo position", servo_map.decode_position, 2),
    ("servo velocity", servo_map.decode_velocity, 2),
    ("servo speed", servo_map.decode_speed, 2),
    ("servo acceleration", servo_map.decode_acceleration, 2),
]


@pytest.mark.parametrize(("name", "decode", "count"), MODBUS_DECODERS,
                         ids=[name for name, _, _ in MODBUS_DECODERS])
@PROPERTY
@given(data=st.data())
def test_any_register_block_decodes_or_is_refused(name: str, decode: Callable[[Any], Any],
                                                  count: int, data: st.DataObject) -> None:
    decoded_or_refused(decode, data.draw(register_blocks(count)), ValueError)


SINGLE_WORD_DECODERS: list[tuple[str, Callable[[int], Any]]] = [
    ("safety outputs", safety_io_map.decode_outputs),
    ("rf frequency", rf_generator_map.decode_frequency_mhz),
    ("rf power", rf_generator_map.decode_power_kw),
    ("servo following error", servo_map.decode_following_error),
    ("servo load", servo_map.decode_load),
    ("servo comm watchdog", servo_map.decode_comm_watchdog_s),
]


@pytest.mark.parametrize(("name", "decode"), SINGLE_WORD_DECODERS,
                         ids=[name for name, _ in SINGLE_WORD_DECODERS])
@PROPERTY
@given(word=WORD)
def test_any_register_decodes_or_is_refused(name: str, decode: Callable[[int], Any],
                                            word: int) -> None:
    decoded_or_refused(decode, word, ValueError)


@PROPERTY
@given(odd_float_words(alicat_mb.READINGS_COUNT).filter(
    lambda w: len(w) == alicat_mb.READINGS_COUNT))
def test_alicat_readings_never_carry_a_nan_flow(words: list[int]) -> None:
    decoded_or_refused(alicat_mb.decode_readings, words, alicat_mb.MapError)


# --------------------------------------------------------------------------------------------
# ASCII frames (their drivers catch exactly these errors)

ALICAT_GOOD = "A +014.70 +025.00 +000.00 +000.00 000.00 N2"
GAUGE_GOOD = diameter_gauge_ascii.encode_measurement(GaugeReading(diameter_mm=42.5, valid=True))
GAUGE_ID = diameter_gauge_ascii.encode_identity("LS-9000 v1.2")


@st.composite
def corrupted(draw: st.DrawFn, good: str) -> str:
    """A good frame truncated, with bytes replaced or inserted, or NaN-like numbers."""
    text = good
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        at = draw(st.integers(min_value=0, max_value=len(text)))
        action = draw(st.sampled_from(["truncate", "replace", "insert"]))
        if action == "truncate":
            text = text[:at]
        elif action == "replace":
            text = text[:at] + draw(st.characters()) + text[at + 1:]
        else:
            text = text[:at] + draw(st.sampled_from(
                ["nan", "inf", "+1e999", "-", "?", " ", "\r", "\x00", "9" * 400, "٣", "²",
                 "MOV", "A", "=", "E12"]) | st.text(max_size=4)) + text[at:]
    return text


def lines(good: str) -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=80), corrupted(good),
                     st.binary(max_size=60).map(lambda b: b.decode("latin-1")))


ASCII_DECODERS: list[tuple[str, Callable[[str], Any], type[Exception], str]] = [
    ("alicat data frame", alicat_ascii.parse_data_frame, AsciiFormatError, ALICAT_GOOD),
    ("alicat register reply", alicat_ascii.parse_register_reply, AsciiFormatError,
     "A   046 = 8"),
    ("alicat setpoint reply", alicat_ascii.parse_setpoint_reply, AsciiFormatError,
     "A +005.00 +005.00 12 SLPM"),
    ("gauge measurement", diameter_gauge_ascii.decode_measurement, GaugeFrameError, GAUGE_GOOD),
    ("gauge identity", diameter_gauge_ascii.decode_identity, GaugeFrameError, GAUGE_ID),
]


@pytest.mark.parametrize(("name", "decode", "refusal", "good"), ASCII_DECODERS,
                         ids=[name for name, *_ in ASCII_DECODERS])
@PROPERTY
@given(data=st.data())
def test_any_ascii_line_decodes_or_is_refused(name: str, decode: Callable[[str], Any],
                                              refusal: type[Exception], good: str,
                                              data: st.DataObject) -> None:
    decode(good)  # the frame the corruptions start from is a good one
    decoded_or_refused(decode, data.draw(lines(good)), refusal)


@PROPERTY
@given(lines(ALICAT_GOOD))
def test_a_rejection_test_never_raises(line: str) -> None:
    assert isinstance(alicat_ascii.is_rejection(line), bool)


@PROPERTY
@given(lines("AS5.00"))
def test_a_simulated_mfc_reads_any_request_or_ignores_it(line: str) -> None:
    # The simulator's side of the same bus: a request it cannot read is None, never a crash.
    with contextlib.suppress(AsciiFormatError):
        alicat_ascii.parse_request(line)


def test_a_decoded_alicat_frame_is_a_frame() -> None:
    assert isinstance(alicat_ascii.parse_data_frame(ALICAT_GOOD), DataFrame)
