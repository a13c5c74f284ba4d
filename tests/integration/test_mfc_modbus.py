"""The Modbus MFC driver against simulated SiCl4 (unit 1) and dopant (unit 2) controllers on
one RTU bus, over TCP and over a pseudo-terminal, including link and value faults."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from controller.config.line import load_line_config
from drivers.codecs import alicat_modbus_map as mb
from drivers.errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceExceptionResponse,
    DeviceProtocolError,
    DeviceRangeError,
    DeviceTimeout,
)
from drivers.mfc import AlicatModbusMfc
from drivers.transports.endpoint import Endpoint
from drivers.transports.modbus import ModbusTransport
from simulators.faults import FaultBoard
from simulators.mfc import AlicatModbusMfcSim
from simulators.modbus_bus import ModbusBusServer, RegisterDevice
from simulators.plant import Plant
from simulators.pty_relay import PtyRelay
from tests.waiting import eventually

PRECURSORS = ("mfc_sicl4", "mfc_dopant")
TIMEOUT_S = 0.2


@dataclass
class PrecursorBus:
    faults: FaultBoard
    plant: Plant
    sims: dict[str, AlicatModbusMfcSim]
    bus: ModbusBusServer
    transport: ModbusTransport
    drivers: dict[str, AlicatModbusMfc] = field(default_factory=dict)
    wall: float = 0.0

    def step(self, seconds: float, dt_s: float = 0.01) -> None:
        for _ in range(round(seconds / dt_s)):
            self.wall += dt_s
            for sim in self.sims.values():
                sim.step(dt_s, self.wall)
            self.plant.step(dt_s)


def make_driver(transport: ModbusTransport, name: str) -> AlicatModbusMfc:
    config = load_line_config().mfc(name)
    assert isinstance(config.unit, int)
    return AlicatModbusMfc(
        transport,
        config.unit,
        name=name,
        full_scale_slpm=config.full_scale_slpm,
        gas_number=config.gas_number,
    )


@pytest.fixture
async def precursor_bus() -> AsyncIterator[PrecursorBus]:
    line = load_line_config()
    faults = FaultBoard()
    plant = Plant.from_line(line, faults)
    sims = {name: AlicatModbusMfcSim(name, line.mfc(name), plant, faults) for name in PRECURSORS}
    bus = ModbusBusServer("precursor_bus", "rtu", list[RegisterDevice](sims.values()), faults)
    await bus.start()
    # RTU framing over TCP, as a serial device server carries it (socket://host:port).
    endpoint = Endpoint("modbus-rtu", host="127.0.0.1", port=bus.port)
    transport = ModbusTransport("precursor_bus", endpoint, timeout_s=TIMEOUT_S)
    try:
        setup = PrecursorBus(faults, plant, sims, bus, transport)
        setup.drivers = {name: make_driver(transport, name) for name in PRECURSORS}
        yield setup
    finally:
        await transport.close()
        await bus.stop()




# -- addressing and the map ----------------------------------------------------------------
async def test_both_units_answer_with_their_gas(precursor_bus: PrecursorBus) -> None:
    sicl4 = await precursor_bus.drivers["mfc_sicl4"].read()
    dopant = await precursor_bus.drivers["mfc_dopant"].read()
    assert (sicl4.gas, dopant.gas) == (255, 19)
    assert sicl4.pressure_psia == pytest.approx(87.215, abs=1e-3)
    assert sicl4.temperature_c == 25.0
    assert (sicl4.mass_slpm, sicl4.setpoint_slpm, sicl4.status) == (0.0, 0.0, frozenset())


async def test_an_absent_unit_times_out(precursor_bus: PrecursorBus) -> None:
    absent = AlicatModbusMfc(
        precursor_bus.transport, 3, name="mfc_absent", full_scale_slpm=5, gas_number=19
    )
    with pytest.raises(DeviceTimeout):
        await absent.read()
    assert (await precursor_bus.drivers["mfc_dopant"].read()).gas == 19


async def test_setpoint_lands_in_registers_1010_1011(precursor_bus: PrecursorBus) -> None:
    await precursor_bus.drivers["mfc_sicl4"].set_flow_slpm(2.5)
    words = await precursor_bus.transport.read_holding(1, 1009, 2)
    assert words == [0x4020, 0x0000]  # 2.5 as IEEE-754, high word first


# -- flow dynamics -------------------------------------------------------------------------
async def test_first_order_response_reaches_the_setpoint(precursor_bus: PrecursorBus) -> None:
    sicl4 = precursor_bus.drivers["mfc_sicl4"]
    await sicl4.set_flow_slpm(2.6)
    tau = precursor_bus.plant.config.mfc_time_constant_s
    precursor_bus.step(tau)
    reading = await sicl4.read()
    assert reading.setpoint_slpm == pytest.approx(2.6)
    assert reading.mass_slpm == pytest.approx(2.6 * (1 - math.exp(-1)), abs=1e-4)
    precursor_bus.step(10 * tau)
    assert (await sicl4.read()).mass_slpm == pytest.approx(2.6, abs=1e-3)
    assert precursor_bus.plant.sicl4_g_min == pytest.approx(2.6 * 7.58, abs=0.01)


async def test_out_of_range_setpoints(precursor_bus: PrecursorBus) -> None:
    dopant = precursor_bus.drivers["mfc_dopant"]
    sent = precursor_bus.transport.requests
    for bad in (-0.01, 5.001, math.nan):
        with pytest.raises(DeviceRangeError):
            await dopant.set_flow_slpm(bad)
    assert precursor_bus.transport.requests == sent
    # A client without the range check meets the device's refusal: exception 3.
    with pytest.raises(DeviceExceptionResponse) as refused:
        await precursor_bus.transport.write_registers(2, mb.SETPOINT, mb.encode_float(7.0))
    assert refused.value.exception_code == 3
    await dopant.set_flow_slpm(5.0)
    precursor_bus.step(10.0)
    reading = await dopant.read()
    assert reading.mass_slpm == pytest.approx(5.0, abs=1e-3)
    assert reading.mass_slpm <= 5.0  # clamped to full scale


async def test_closed_precursor_valve_stops_only_precursors(precursor_bus: PrecursorBus) -> None:
    sicl4 = precursor_bus.drivers["mfc_sicl4"]
    await sicl4.set_flow_slpm(3.0)
    precursor_bus.step(5.0)
    precursor_bus.plant.precursor_valve_open = False
    precursor_bus.step(0.05)
    assert (await sicl4.read()).mass_slpm == 0.0
    assert precursor_bus.plant.gas_flow_slpm["mfc_sicl4"] == 0.0
    precursor_bus.plant.precursor_valve_open = True
    precursor_bus.step(5.0)
    assert (await sicl4.read()).mass_slpm == pytest.approx(3.0, abs=1e-3)


async def test_gas_select_and_valve_hold(precursor_bus: PrecursorBus) -> None:
    dopant = precursor_bus.drivers["mfc_dopant"]
    await dopant.select_gas(8)
    assert (await dopant.read()).gas == 8
    await dopant.select_gas(19)
    await dopant.set_flow_slpm(1.0)
    precursor_bus.step(5.0)
    await dopant.hold_valve_closed()
    precursor_bus.step(0.05)
    held = await dopant.read()
    assert held.status == {"HLD"}
    assert held.mass_slpm == 0.0
    await dopant.cancel_hold()
    precursor_bus.step(5.0)
    reading = await dopant.read()
    assert reading.status == frozenset()
    assert reading.mass_slpm == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(DeviceRangeError):
        await dopant.select_gas(256)


async def test_a_refused_command_is_a_protocol_error(
    precursor_bus: PrecursorBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    dopant, sim = precursor_bus.drivers["mfc_dopant"], precursor_bus.sims["mfc_dopant"]
    await precursor_bus.transport.write_registers(2, mb.COMMAND_ID, [42, 0])
    assert await precursor_bus.transport.read_holding(2, mb.COMMAND_ID, 1) == [32769]
    # The driver reads the result of its own command, so a stale code never leaks in.
    await dopant.cancel_hold()
    monkeypatch.setattr(sim, "_run_command", lambda *_: mb.CommandResult.INVALID_SETTING)
    with pytest.raises(DeviceProtocolError):
        await dopant.hold_valve_closed()


# -- faults --------------------------------------------------------------------------------
async def test_silent_unit_times_out(precursor_bus: PrecursorBus) -> None:
    precursor_bus.faults.inject("mfc_sicl4", "silent")
    with pytest.raises(DeviceTimeout):
        await precursor_bus.drivers["mfc_sicl4"].read()
    assert (await precursor_bus.drivers["mfc_dopant"].read()).gas == 19
    precursor_bus.faults.clear("mfc_sicl4")
    assert (await precursor_bus.drivers["mfc_sicl4"].read()).gas == 255


async def test_corrupt_reply_is_a_protocol_error(precursor_bus: PrecursorBus) -> None:
    precursor_bus.faults.inject("mfc_dopant", "corrupt")
    with pytest.raises(DeviceProtocolError):
        await precursor_bus.drivers["mfc_dopant"].read()


async def test_torn_reply_is_an_error(precursor_bus: PrecursorBus) -> None:
    precursor_bus.faults.inject("mfc_dopant", "torn")
    with pytest.raises((DeviceProtocolError, DeviceTimeout)):
        await precursor_bus.drivers["mfc_dopant"].read()
    precursor_bus.faults.clear("mfc_dopant")

    async def answering() -> bool:
        try:
            return (await precursor_bus.drivers["mfc_dopant"].read()).gas == 19
        except DeviceError:
            return False

    await eventually(answering)


async def test_stuck_and_drift(precursor_bus: PrecursorBus) -> None:
    sicl4 = precursor_bus.drivers["mfc_sicl4"]
    await sicl4.set_flow_slpm(4.0)
    precursor_bus.step(0.5)
    before = await sicl4.read()
    precursor_bus.faults.inject("mfc_sicl4", "stuck")
    precursor_bus.step(5.0)
    assert (await sicl4.read()).mass_slpm == before.mass_slpm
    precursor_bus.faults.clear("mfc_sicl4")
    assert (await sicl4.read()).mass_slpm == pytest.approx(4.0, abs=1e-3)
    precursor_bus.faults.inject("mfc_sicl4", "drift", params={"offset": -0.5})
    assert (await sicl4.read()).mass_slpm == pytest.approx(3.5, abs=1e-3)
    precursor_bus.faults.inject("mfc_sicl4", "drift", params={"offset": 7.0})
    assert "MOV" in (await sicl4.read()).status
    assert precursor_bus.plant.gas_flow_slpm["mfc_sicl4"] == pytest.approx(4.0, abs=1e-3)


async def test_disconnect_then_reconnect(precursor_bus: PrecursorBus) -> None:
    dopant = precursor_bus.drivers["mfc_dopant"]
    await dopant.read()
    precursor_bus.faults.inject("mfc_dopant", "disconnect")

    async def disconnected() -> bool:
        try:
            await dopant.read()
        except DeviceError as exc:
            return isinstance(exc, DeviceDisconnected)
        return False

    await eventually(disconnected)
    precursor_bus.faults.clear("mfc_dopant")

    async def answering() -> bool:
        try:
            return (await dopant.read()).gas == 19
        except DeviceError:
            return False

    await eventually(answering)


# -- the serial path -----------------------------------------------------------------------
async def test_the_bus_over_a_pty(precursor_bus: PrecursorBus) -> None:
    relay = PtyRelay("precursor_bus", "127.0.0.1", precursor_bus.bus.port)
    await relay.start()
    endpoint = Endpoint("modbus-rtu", path=relay.path)
    try:
        async with ModbusTransport("precursor_pty", endpoint, timeout_s=TIMEOUT_S) as transport:
            drivers = {name: make_driver(transport, name) for name in PRECURSORS}
            await drivers["mfc_dopant"].set_flow_slpm(0.5)
            precursor_bus.step(5.0)
            assert (await drivers["mfc_sicl4"].read()).gas == 255
            dopant = await drivers["mfc_dopant"].read()
            assert dopant.mass_slpm == pytest.approx(0.5, abs=1e-3)
            absent = AlicatModbusMfc(
                transport, 3, name="mfc_absent", full_scale_slpm=5, gas_number=19
            )
            with pytest.raises(DeviceTimeout):
                await absent.read()
    finally:
        await relay.stop()
