"""What only the Alicat Modbus MFCs have, on the contract's rig (test_mfc_contract.py): the
setpoint's words in registers 1010-1011, the device's exception 3 beyond full scale, a refused
command, and the SiCl4 flow reaching the plant in grams."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from drivers.codecs import alicat_modbus_map as mb
from drivers.errors import DeviceExceptionResponse, DeviceProtocolError
from drivers.transports.endpoint import Endpoint
from drivers.transports.modbus import ModbusTransport
from simulators.faults import FaultBoard
from simulators.plant import Plant
from tests.integration.test_mfc_contract import LINE, MODBUS, MfcBus, start_server


@pytest.fixture
async def precursor_bus() -> AsyncIterator[MfcBus]:
    faults = FaultBoard()
    plant = Plant.from_line(LINE, faults)
    sims, server = await start_server(MODBUS, faults, plant)
    transport = MODBUS.transport(Endpoint("modbus-rtu", host="127.0.0.1", port=server.port),
                                 "precursor_bus")
    try:
        bus = MfcBus(MODBUS, faults, plant, sims, server, transport)
        bus.drivers = {name: MODBUS.driver(transport, name) for name in MODBUS.devices}
        yield bus
    finally:
        await transport.close()
        await server.stop()


def modbus_of(bus: MfcBus) -> ModbusTransport:
    assert isinstance(bus.transport, ModbusTransport)
    return bus.transport


async def test_modbus_setpoint_lands_in_registers_1010_1011(precursor_bus: MfcBus) -> None:
    await precursor_bus.drivers["mfc_sicl4"].set_flow_slpm(2.5)
    words = await modbus_of(precursor_bus).read_holding(1, 1009, 2)
    assert words == [0x4020, 0x0000]  # 2.5 as IEEE-754, high word first


async def test_modbus_the_device_refuses_a_setpoint_beyond_full_scale(
        precursor_bus: MfcBus) -> None:
    # A client without the range check meets the device's refusal: exception 3.
    with pytest.raises(DeviceExceptionResponse) as refused:
        await modbus_of(precursor_bus).write_registers(2, mb.SETPOINT, mb.encode_float(7.0))
    assert refused.value.exception_code == 3


async def test_modbus_the_sicl4_flow_reaches_the_plant_in_grams(precursor_bus: MfcBus) -> None:
    await precursor_bus.drivers["mfc_sicl4"].set_flow_slpm(2.6)
    precursor_bus.step(11 * precursor_bus.plant.config.mfc_time_constant_s)
    assert precursor_bus.plant.sicl4_g_min == pytest.approx(
        LINE.mfc("mfc_sicl4").g_min_for(2.6), abs=0.01)


async def test_modbus_a_refused_command_is_a_protocol_error(
    precursor_bus: MfcBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    dopant, sim = precursor_bus.drivers["mfc_dopant"], precursor_bus.sims["mfc_dopant"]
    transport = modbus_of(precursor_bus)
    await transport.write_registers(2, mb.COMMAND_ID, [42, 0])
    assert await transport.read_holding(2, mb.COMMAND_ID, 1) == [32769]
    # The driver reads the result of its own command, so a stale code never leaks in.
    await dopant.cancel_hold()
    monkeypatch.setattr(sim, "_run_command", lambda *_: mb.CommandResult.INVALID_SETTING)
    with pytest.raises(DeviceProtocolError):
        await dopant.hold_valve_closed()
