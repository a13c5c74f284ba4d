"""The safety PLC's register map: pure encode / decode, pinned to docs/devices.md."""

from __future__ import annotations

import dataclasses

import pytest
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import WriteMultipleRegistersRequest

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
    room_o2_pct=20.9,
    heartbeat_latched=False,
    outputs_effective=SafetyOutputs(
        gas_master_valve=True, exhaust_fan=True, beacon_green=True, rf_permit=True
    ),
    line_owner=0x1A2B,
    refused_owner=0,
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
        2090,  # room O2 20.9 % x 100
        0x0185,  # effective outputs: master valve, exhaust fan, beacon green, RF permit
        0x1A2B,  # the line's owner
        0,  # no beat refused
    ]


def test_input_and_holding_addresses_are_pinned() -> None:
    assert (io_map.IR_GAS_DETECTOR, io_map.IR_ROD_TEMPERATURE) == (9, 10)
    assert (io_map.IR_ROOM_O2, io_map.IR_OUTPUTS_EFFECTIVE) == (11, 12)
    assert (io_map.IR_LINE_OWNER, io_map.IR_REFUSED_OWNER, io_map.INPUT_COUNT) == (13, 14, 15)
    assert (io_map.HR_OUTPUTS, io_map.HR_HEARTBEAT, io_map.HR_COMMAND) == (0, 1, 2)
    assert (io_map.HR_BEAT_OWNER, io_map.HR_BEAT_COUNTER, io_map.BEAT_COUNT) == (3, 4, 2)
    assert (io_map.HR_INPUTS_COPY, io_map.HOLDING_COUNT) == (16, 31)
    assert io_map.COMMAND_RESET_HEARTBEAT_LATCH == 1
    assert io_map.OUTPUTS_MASK == 0x01FF


def test_heartbeat_latched_is_digital_bit_8() -> None:
    latched = dataclasses.replace(NOMINAL, heartbeat_latched=True, heartbeat_ok=False)
    words = io_map.encode_inputs(latched)
    assert words[io_map.IR_DIGITAL] == 0b1_1001_1111
    assert io_map.decode_inputs(words) == latched


def test_room_o2_is_unsigned_hundredths() -> None:
    words = io_map.encode_inputs(dataclasses.replace(NOMINAL, room_o2_pct=25.0))
    assert words[io_map.IR_ROOM_O2] == 2500
    assert io_map.decode_inputs(words).room_o2_pct == pytest.approx(25.0)


def test_effective_outputs_with_reserved_bits_are_malformed() -> None:
    words = io_map.encode_inputs(NOMINAL)
    words[io_map.IR_OUTPUTS_EFFECTIVE] = 0x0200
    with pytest.raises(ValueError, match="reserved"):
        io_map.decode_inputs(words)


def test_new_input_fields_default_to_fresh_air_and_nothing_latched() -> None:
    legacy = dataclasses.replace(NOMINAL)
    fields = {f.name: getattr(legacy, f.name) for f in dataclasses.fields(SafetyInputs)}
    for name in ("room_o2_pct", "heartbeat_latched", "outputs_effective", "line_owner",
                 "refused_owner"):
        del fields[name]
    built = SafetyInputs(**fields)
    assert built.room_o2_pct == io_map.NOMINAL_ROOM_O2_PCT == 20.9
    assert not built.heartbeat_latched
    assert built.outputs_effective == SafetyOutputs()
    assert built.line_owner == built.refused_owner == io_map.NO_OWNER == 0  # a free line


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


def test_rf_permit_is_output_bit_8() -> None:
    assert io_map.encode_outputs(SafetyOutputs(rf_permit=True)) == 0x0100
    assert io_map.OUTPUT_BITS[-1] == "rf_permit"


@pytest.mark.parametrize("word", [0x0200, 0x8000, 0xFFFF])
def test_reserved_output_bits_are_malformed(word: int) -> None:
    with pytest.raises(ValueError, match="reserved"):
        io_map.decode_outputs(word)


def test_heartbeat_counter_wraps_at_65535() -> None:
    assert io_map.next_heartbeat(0) == 1
    assert io_map.next_heartbeat(65534) == 65535
    assert io_map.next_heartbeat(65535) == 0


def test_wrong_block_length_is_refused() -> None:
    with pytest.raises(ValueError):
        io_map.decode_inputs([0] * 3)


# -- the heartbeat: owner id and counter in one write (docs/devices.md) -------------------------
def test_the_beat_is_owner_then_counter() -> None:
    assert io_map.encode_beat(0x1A2B, 7) == [0x1A2B, 7]
    assert io_map.encode_beat(0xFFFF, 65535) == [0xFFFF, 65535]


def test_the_beat_pins_its_fc16_frame() -> None:
    """The request a controller with owner id 0x1A2B sends as its 42nd beat to unit 1 (Modbus
    TCP: MBAP header, FC 16 at HR 3, 2 registers, 4 bytes, owner, counter)."""
    request = WriteMultipleRegistersRequest(
        address=io_map.HR_BEAT_OWNER, registers=io_map.encode_beat(0x1A2B, 42), dev_id=1,
        transaction_id=0x12,
    )
    frame = FramerSocket(DecodePDU(is_server=False)).buildFrame(request)
    assert frame == bytes.fromhex("0012 0000 000B 01 10 0003 0002 04 1A2B 002A")


@pytest.mark.parametrize("owner_id", [0, -1, 0x10000])
def test_an_owner_id_is_nonzero_16_bits(owner_id: int) -> None:
    with pytest.raises(ValueError, match="owner id"):
        io_map.encode_beat(owner_id, 1)


@pytest.mark.parametrize("counter", [-1, 0x10000])
def test_a_beat_counter_is_16_bits(counter: int) -> None:
    with pytest.raises(ValueError, match="counter"):
        io_map.encode_beat(1, counter)


def test_owner_ids_are_shown_as_four_hex_digits() -> None:
    assert io_map.format_owner_id(0x1A2B) == "0x1A2B"
    assert io_map.format_owner_id(0x00AF) == "0x00AF"


def test_the_owner_and_the_refused_id_are_plain_registers() -> None:
    words = io_map.encode_inputs(dataclasses.replace(NOMINAL, refused_owner=0xBEEF))
    assert words[io_map.IR_REFUSED_OWNER] == 0xBEEF
    decoded = io_map.decode_inputs(words)
    assert (decoded.line_owner, decoded.refused_owner) == (0x1A2B, 0xBEEF)
