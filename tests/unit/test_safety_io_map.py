"""The safety PLC's register map: pure encode / decode, pinned to docs/devices.md."""

from __future__ import annotations

import dataclasses

import pytest

from drivers.codecs import safety_io_map as io_map
from drivers.codecs.safety_io_map import SafetyInputs, SafetyOutputs

NOMINAL = SafetyInputs(
    estop_ok=True,
    doors_closed=True,
    scrubber_ready=True,
    safety_relay_ok=True,
    rf_enable=True,
    plasma_optical=False,
    heartbeat_ok=True,
    gas_supply_ok=True,
    water_flow_l_min=25.0,
    water_temp_c=22.5,
    exhaust_draft_pa=-50.0,
    supply_ar_bar=5.0,
    supply_o2_bar=4.5,
    supply_n2_bar=6.0,
    supply_sicl4_bar=1.25,
    supply_dopant_bar=3.0,
    gas_detector_ppm=0.12,
    rod_temperature_c=1500.0,
)


def test_nominal_inputs_encode_to_the_documented_words() -> None:
    assert io_map.encode_inputs(NOMINAL) == [
        0b11011111,  # every digital input true but plasma_optical (bit 5)
        250,  # 25.0 L/min x 10
        225,  # 22.5 C x 10
        0xFE0C,  # -50.0 Pa x 10 = -500, two's complement
        500,
        450,
        600,
        125,
        300,
        12,  # 0.12 ppm x 100
        15000,  # 1500 C x 10
    ]


def test_inputs_round_trip() -> None:
    assert io_map.decode_inputs(io_map.encode_inputs(NOMINAL)) == NOMINAL


@pytest.mark.parametrize(("bit", "name"), list(enumerate(io_map.DIGITAL_BITS)))
def test_each_digital_bit_alone(bit: int, name: str) -> None:
    words = [1 << bit] + [0] * (io_map.INPUT_COUNT - 1)
    decoded = io_map.decode_inputs(words)
    true_fields = [n for n in io_map.DIGITAL_BITS if getattr(decoded, n)]
    assert true_fields == [name]


@pytest.mark.parametrize(
    ("value", "word"),
    [(-50.0, 0xFE0C), (-0.1, 0xFFFF), (0.0, 0), (3276.7, 0x7FFF), (-3276.8, 0x8000)],
)
def test_signed_draft(value: float, word: int) -> None:
    assert io_map.encode_analog(value, io_map.DRAFT_SCALE, signed=True) == word
    assert io_map.decode_analog(word, io_map.DRAFT_SCALE, signed=True) == pytest.approx(value)


def test_negative_water_temperature_is_signed() -> None:
    inputs = dataclasses.replace(NOMINAL, water_temp_c=-5.5)
    words = io_map.encode_inputs(inputs)
    assert words[io_map.IR_WATER_TEMP] == 0x10000 - 55
    assert io_map.decode_inputs(words).water_temp_c == pytest.approx(-5.5)


def test_out_of_span_values_saturate_like_a_transmitter() -> None:
    assert io_map.encode_analog(-3.0, io_map.FLOW_SCALE, signed=False) == 0
    assert io_map.encode_analog(1e6, io_map.FLOW_SCALE, signed=False) == 0xFFFF
    assert io_map.encode_analog(-1e6, io_map.DRAFT_SCALE, signed=True) == 0x8000


@pytest.mark.parametrize(("bit", "name"), list(enumerate(io_map.OUTPUT_BITS)))
def test_each_output_bit(bit: int, name: str) -> None:
    outputs = SafetyOutputs(**{name: True})
    assert io_map.encode_outputs(outputs) == 1 << bit
    assert io_map.decode_outputs(1 << bit) == outputs


def test_outputs_default_to_all_off() -> None:
    assert io_map.encode_outputs(SafetyOutputs()) == 0


def test_reserved_output_bits_are_malformed() -> None:
    with pytest.raises(ValueError, match="reserved"):
        io_map.decode_outputs(0x0100)


def test_heartbeat_counter_wraps_at_65535() -> None:
    assert io_map.next_heartbeat(0) == 1
    assert io_map.next_heartbeat(65534) == 65535
    assert io_map.next_heartbeat(65535) == 0


def test_wrong_block_length_is_refused() -> None:
    with pytest.raises(ValueError):
        io_map.decode_inputs([0] * 3)
