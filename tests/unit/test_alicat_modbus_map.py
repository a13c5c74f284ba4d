"""Alicat's Modbus map: PDU addresses, float words and the simulator's register logic."""

from __future__ import annotations

import math
import struct

import pytest

from controller.config.line import load_line_config
from drivers.codecs import alicat_modbus_map as mb
from simulators.faults import FaultBoard
from simulators.mfc import AlicatModbusMfcSim, Hold
from simulators.modbus_bus import ILLEGAL_ADDRESS, ILLEGAL_VALUE
from simulators.plant import Plant


def test_pdu_addresses_are_register_minus_one() -> None:
    assert mb.COMMAND_ID == 999
    assert mb.COMMAND_ARGUMENT == 1000
    assert mb.SETPOINT == 1009
    assert mb.GAS_NUMBER == 1199
    assert mb.STATUS == 1200
    assert mb.PRESSURE == 1202
    assert mb.TEMPERATURE == 1204
    assert mb.VOLUMETRIC_FLOW == 1206
    assert mb.MASS_FLOW == 1208
    assert (mb.READINGS_START, mb.READINGS_COUNT) == (1199, 11)
    assert mb.MAP_SIZE == 1210


def test_floats_are_ieee754_high_word_first() -> None:
    assert mb.encode_float(1.0) == [0x3F80, 0x0000]
    assert mb.encode_float(14.7) == [0x416B, 0x3333]
    assert mb.encode_float(-2.5) == [0xC020, 0x0000]
    assert mb.decode_float([0x4120, 0x0000]) == 10.0


def test_status_word_bits() -> None:
    assert mb.encode_status({"HLD"}) == [0x0000, 0x0100]
    assert mb.encode_status({"MOV", "VOV"}) == [0x0000, 0x0014]
    assert mb.decode_status([0x0000, 0x0120]) == {"HLD", "MOV"}  # bit 5: mass underflow
    assert mb.decode_status([0xFFFF, 0x0000]) == frozenset()  # no flags in the high word
    with pytest.raises(mb.MapError):
        mb.encode_status({"LCK"})


def test_readings_block_is_pinned() -> None:
    readings = mb.Readings(
        gas_number=19,
        status=frozenset({"HLD"}),
        pressure_psia=14.7,
        temperature_c=25.0,
        volumetric_slpm=0.0,
        mass_slpm=1.0,
    )
    words = mb.encode_readings(readings)
    assert words == [19, 0, 0x0100, 0x416B, 0x3333, 0x41C8, 0, 0, 0, 0x3F80, 0]
    decoded = mb.decode_readings(words)
    assert decoded.gas_number == 19
    assert decoded.status == {"HLD"}
    assert decoded.pressure_psia == pytest.approx(14.7)
    assert decoded.mass_slpm == 1.0


def test_malformed_readings_are_refused() -> None:
    with pytest.raises(mb.MapError):
        mb.decode_readings([0] * 10)
    nan = list(struct.unpack(">HH", struct.pack(">f", math.nan)))
    with pytest.raises(mb.MapError):
        mb.decode_readings([8, 0, 0, *nan, 0, 0, 0, 0, 0, 0])


def test_command_registers() -> None:
    assert mb.command_registers(mb.SpecialCommand.CHANGE_GAS, 8) == [1, 8]
    assert mb.command_registers(mb.SpecialCommand.VALVE, mb.ValveSetting.HOLD_CLOSED) == [6, 1]
    with pytest.raises(mb.MapError):
        mb.command_registers(mb.SpecialCommand.TARE, 70000)


# -- the simulator's register logic (no network) -------------------------------------------
@pytest.fixture
def sim() -> AlicatModbusMfcSim:
    line = load_line_config()
    faults = FaultBoard()
    plant = Plant.from_line(line, faults)
    return AlicatModbusMfcSim("mfc_dopant", line.mfc("mfc_dopant"), plant, faults)


def test_simulator_setpoint_and_range(sim: AlicatModbusMfcSim) -> None:
    assert sim.write_holding(mb.SETPOINT, mb.encode_float(2.5)) is None
    assert sim.read_holding(mb.SETPOINT, 2) == mb.encode_float(2.5)
    assert sim.write_holding(mb.SETPOINT, mb.encode_float(5.01)) == ILLEGAL_VALUE  # FS is 5
    assert sim.write_holding(mb.SETPOINT, mb.encode_float(-0.1)) == ILLEGAL_VALUE
    assert sim.write_holding(mb.SETPOINT, mb.encode_float(math.nan)) == ILLEGAL_VALUE
    assert sim.write_holding(mb.SETPOINT, [0x4000]) == ILLEGAL_VALUE  # half a float
    assert sim.core.setpoint_slpm == 2.5


def test_simulator_readings_in_both_tables(sim: AlicatModbusMfcSim) -> None:
    words = sim.read_input(mb.READINGS_START, mb.READINGS_COUNT)
    assert isinstance(words, list)
    assert words[0] == 19
    assert sim.read_holding(mb.READINGS_START, mb.READINGS_COUNT) == words
    assert sim.write_holding(mb.PRESSURE, [0, 0]) == ILLEGAL_ADDRESS  # read-only mirror
    assert sim.write_holding(0, [1]) == ILLEGAL_ADDRESS


def test_simulator_special_commands(sim: AlicatModbusMfcSim) -> None:
    assert sim.write_holding(mb.COMMAND_ID, [1, 8]) is None
    assert sim.core.gas_number == 8
    assert sim.read_holding(mb.COMMAND_ID, 1) == [mb.CommandResult.SUCCESS]
    assert sim.write_holding(mb.COMMAND_ID, [6, 1]) is None
    assert sim.core.hold is Hold.CLOSED
    assert sim.write_holding(mb.COMMAND_ID, [6, 9]) is None
    assert sim.read_holding(mb.COMMAND_ID, 1) == [mb.CommandResult.INVALID_SETTING]
    assert sim.write_holding(mb.COMMAND_ID, [42, 0]) is None
    assert sim.read_holding(mb.COMMAND_ID, 1) == [mb.CommandResult.INVALID_COMMAND]
    assert sim.write_holding(mb.GAS_NUMBER, [11]) is None  # direct gas-number write
    assert sim.core.gas_number == 11
    assert sim.write_holding(mb.GAS_NUMBER, [300]) == ILLEGAL_VALUE
