"""The MFC contract: both drivers against their simulated multi-drop buses, over TCP and over a
pseudo-terminal, including link and value faults. One behaviour, two protocols:

- Alicat ASCII: the process gases (Ar, O2, N2 as units A, B, C) on one serial line;
- Alicat Modbus RTU: the precursors (SiCl4 unit 1, dopant unit 2) on one RTU bus.

What only one protocol has (its bytes on the wire, its quirks) is at the end of this file."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

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
from drivers.mfc import AlicatAsciiMfc, AlicatModbusMfc, MassFlowController
from drivers.transports.ascii import AsciiTransport
from drivers.transports.endpoint import Endpoint
from drivers.transports.modbus import ModbusTransport
from simulators.ascii_bus import AsciiBusServer, AsciiDevice
from simulators.faults import FaultBoard
from simulators.mfc import AlicatAsciiMfcSim, AlicatModbusMfcSim
from simulators.modbus_bus import ModbusBusServer, RegisterDevice
from simulators.plant import Plant
from simulators.pty_relay import PtyRelay
from tests.waiting import eventually

LINE = load_line_config()
TIMEOUT_S = 0.2
Transport = AsciiTransport | ModbusTransport
Server = AsciiBusServer | ModbusBusServer


@dataclass(frozen=True)
class Protocol:
    """One protocol's bus and the figures its contract tests use."""

    name: str
    devices: tuple[str, ...]
    gases: dict[str, str | int]  # what each unit reports as its gas
    gas_8: str | int  # what a unit reports after gas number 8 (N2) is selected
    absent_unit: str | int
    pressure_psia: float  # the simulated flow body's pressure, as the protocol carries it
    pressure_abs: float
    resolution: float  # of a flow on this protocol's wire
    tau_abs: float  # how close the flow is to the first-order curve at one time constant
    flowing: str  # the unit the dynamics tests drive
    flow_slpm: float
    valve: str  # the plant's valve in front of these units
    bad_setpoints: tuple[float, ...]
    drift_slpm: float  # an offset that keeps the reading within full scale
    pty_flow_slpm: float

    def unit(self, name: str) -> str | int:
        return LINE.mfc(name).unit

    def driver(self, transport: Transport, name: str) -> MassFlowController:
        config = LINE.mfc(name)
        return self._driver(transport, config.unit, name, config.full_scale_slpm,
                            config.gas_number)

    def absent(self, transport: Transport) -> MassFlowController:
        return self._driver(transport, self.absent_unit, "mfc_absent", 5.0, 8)

    @staticmethod
    def _driver(transport: Transport, unit: str | int, name: str, full_scale: float,
                gas: int) -> MassFlowController:
        if isinstance(transport, AsciiTransport):
            return AlicatAsciiMfc(transport, str(unit), name=name, full_scale_slpm=full_scale,
                                  gas_number=gas)
        return AlicatModbusMfc(transport, int(unit), name=name, full_scale_slpm=full_scale,
                               gas_number=gas)

    def transport(self, endpoint: Endpoint, name: str) -> Transport:
        if self.name == "ascii":
            return AsciiTransport(name, endpoint, timeout_s=TIMEOUT_S)
        return ModbusTransport(name, endpoint, timeout_s=TIMEOUT_S)

    @property
    def wire(self) -> Literal["alicat-ascii", "modbus-rtu"]:
        """The endpoint protocol (the Modbus bus is RTU framing, as a serial server carries
        it over TCP)."""
        return "alicat-ascii" if self.name == "ascii" else "modbus-rtu"


ASCII = Protocol(
    name="ascii", devices=("mfc_ar", "mfc_o2", "mfc_n2"),
    gases={"mfc_ar": "Ar", "mfc_o2": "O2", "mfc_n2": "N2"}, gas_8="N2", absent_unit="D",
    pressure_psia=87.21, pressure_abs=1e-4, resolution=0.01, tau_abs=0.01,
    flowing="mfc_o2", flow_slpm=80.0,
    valve="master_valve_open", bad_setpoints=(-0.1, 200.01, math.nan, math.inf),
    drift_slpm=1.5, pty_flow_slpm=100.0)
MODBUS = Protocol(
    name="modbus", devices=("mfc_sicl4", "mfc_dopant"),
    gases={"mfc_sicl4": 255, "mfc_dopant": 19}, gas_8=8, absent_unit=3,
    pressure_psia=87.215, pressure_abs=1e-3, resolution=1e-3, tau_abs=1e-4,
    flowing="mfc_sicl4", flow_slpm=2.6,
    valve="precursor_valve_open", bad_setpoints=(-0.01, 10.001, math.nan, math.inf),
    drift_slpm=-0.5, pty_flow_slpm=0.5)


@dataclass
class MfcBus:
    protocol: Protocol
    faults: FaultBoard
    plant: Plant
    sims: dict[str, AlicatAsciiMfcSim] | dict[str, AlicatModbusMfcSim]
    server: Server
    transport: Transport
    drivers: dict[str, MassFlowController] = field(default_factory=dict)
    wall: float = 0.0

    def step(self, seconds: float, dt_s: float = 0.01) -> None:
        """Advance the simulated devices and plant by ``seconds`` of process time."""
        for _ in range(round(seconds / dt_s)):
            self.wall += dt_s
            for sim in self.sims.values():
                sim.step(dt_s, self.wall)
            self.plant.step(dt_s)

    @property
    def flowing(self) -> MassFlowController:
        return self.drivers[self.protocol.flowing]

    @property
    def other(self) -> MassFlowController:
        """A unit on the same bus other than the flowing one."""
        return next(d for n, d in self.drivers.items() if n != self.protocol.flowing)

    def gas_of(self, driver: MassFlowController) -> str | int:
        return self.protocol.gases[driver.name]


async def start_server(protocol: Protocol, faults: FaultBoard, plant: Plant,
                       ) -> tuple[dict[str, AlicatAsciiMfcSim] | dict[str, AlicatModbusMfcSim],
                                  Server]:
    if protocol is ASCII:
        ascii_sims = {n: AlicatAsciiMfcSim(n, LINE.mfc(n), plant, faults)
                      for n in protocol.devices}
        ascii_server = AsciiBusServer("gas_bus", list[AsciiDevice](ascii_sims.values()), faults)
        await ascii_server.start()
        return ascii_sims, ascii_server
    modbus_sims = {n: AlicatModbusMfcSim(n, LINE.mfc(n), plant, faults)
                   for n in protocol.devices}
    modbus_server = ModbusBusServer("precursor_bus", "rtu",
                                    list[RegisterDevice](modbus_sims.values()), faults)
    await modbus_server.start()
    return modbus_sims, modbus_server


@pytest.fixture(params=[ASCII, MODBUS], ids=lambda p: p.name)
async def mfc_bus(request: pytest.FixtureRequest) -> AsyncIterator[MfcBus]:
    protocol: Protocol = request.param
    faults = FaultBoard()
    plant = Plant.from_line(LINE, faults)
    sims, server = await start_server(protocol, faults, plant)
    endpoint = Endpoint(protocol.wire, host="127.0.0.1", port=server.port)
    transport = protocol.transport(endpoint, f"{protocol.name}_bus")
    try:
        bus = MfcBus(protocol, faults, plant, sims, server, transport)
        bus.drivers = {name: protocol.driver(transport, name) for name in protocol.devices}
        yield bus
    finally:
        await transport.close()
        await server.stop()


async def answers(driver: MassFlowController, gas: str | int) -> bool:
    try:
        return (await driver.read()).gas == gas
    except DeviceError:
        return False


# -- addressing ----------------------------------------------------------------------------
async def test_each_unit_answers_with_its_gas(mfc_bus: MfcBus) -> None:
    gases = {name: (await driver.read()).gas for name, driver in mfc_bus.drivers.items()}
    assert gases == mfc_bus.protocol.gases
    reading = await mfc_bus.flowing.read()
    assert reading.pressure_psia == pytest.approx(mfc_bus.protocol.pressure_psia,
                                                 abs=mfc_bus.protocol.pressure_abs)
    assert reading.temperature_c == 25.0
    assert (reading.mass_slpm, reading.setpoint_slpm, reading.status) == (0.0, 0.0, frozenset())


async def test_an_absent_unit_times_out(mfc_bus: MfcBus) -> None:
    with pytest.raises(DeviceTimeout):
        await mfc_bus.protocol.absent(mfc_bus.transport).read()
    assert await answers(mfc_bus.other, mfc_bus.gas_of(mfc_bus.other))  # the bus is fine


# -- flow dynamics -------------------------------------------------------------------------
async def test_first_order_response_reaches_the_setpoint(mfc_bus: MfcBus) -> None:
    p, mfc = mfc_bus.protocol, mfc_bus.flowing
    await mfc.set_flow_slpm(p.flow_slpm)
    tau = mfc_bus.plant.config.mfc_time_constant_s
    mfc_bus.step(tau)
    after_tau = await mfc.read()
    assert after_tau.setpoint_slpm == pytest.approx(p.flow_slpm)
    assert after_tau.mass_slpm == pytest.approx(p.flow_slpm * (1 - math.exp(-1)),
                                                abs=p.tau_abs)
    mfc_bus.step(10 * tau)
    settled = await mfc.read()
    assert settled.mass_slpm == pytest.approx(p.flow_slpm, abs=p.resolution)
    assert mfc_bus.plant.gas_flow_slpm[p.flowing] == pytest.approx(p.flow_slpm,
                                                                   abs=p.resolution)
    assert 0 < settled.volumetric_slpm < settled.mass_slpm  # 6 bar a in the flow body


async def test_out_of_range_setpoints_are_refused_before_sending(mfc_bus: MfcBus) -> None:
    mfc = mfc_bus.flowing
    sent = mfc_bus.transport.requests
    for bad in mfc_bus.protocol.bad_setpoints:
        with pytest.raises(DeviceRangeError):
            await mfc.set_flow_slpm(bad)
    assert mfc_bus.transport.requests == sent
    await mfc.set_flow_slpm(mfc.full_scale_slpm)  # full scale itself is fine
    mfc_bus.step(10.0)
    reading = await mfc.read()
    assert reading.mass_slpm == pytest.approx(mfc.full_scale_slpm, abs=mfc_bus.protocol.resolution)
    assert reading.mass_slpm <= mfc.full_scale_slpm


async def test_the_closed_valve_in_front_stops_the_flow(mfc_bus: MfcBus) -> None:
    p, mfc = mfc_bus.protocol, mfc_bus.flowing
    await mfc.set_flow_slpm(p.flow_slpm)
    mfc_bus.step(5.0)
    setattr(mfc_bus.plant, p.valve, False)
    mfc_bus.step(0.05)
    assert (await mfc.read()).mass_slpm == 0.0
    assert mfc_bus.plant.gas_flow_slpm[p.flowing] == 0.0
    setattr(mfc_bus.plant, p.valve, True)
    mfc_bus.step(5.0)
    assert (await mfc.read()).mass_slpm == pytest.approx(p.flow_slpm, abs=p.resolution)


async def test_gas_select_and_valve_hold(mfc_bus: MfcBus) -> None:
    p, mfc = mfc_bus.protocol, mfc_bus.flowing
    await mfc.select_gas(8)
    assert (await mfc.read()).gas == p.gas_8
    await mfc.select_gas(mfc.gas_number)
    await mfc.set_flow_slpm(p.flow_slpm)
    mfc_bus.step(5.0)
    await mfc.hold_valve_closed()
    mfc_bus.step(0.05)
    held = await mfc.read()
    assert held.valve_held and held.status == {"HLD"}
    assert held.mass_slpm == 0.0
    await mfc.cancel_hold()
    mfc_bus.step(5.0)
    reading = await mfc.read()
    assert reading.status == frozenset()
    assert reading.mass_slpm == pytest.approx(p.flow_slpm, abs=p.resolution)
    with pytest.raises(DeviceRangeError):
        await mfc.select_gas(256)


# -- faults --------------------------------------------------------------------------------
async def test_a_silent_unit_times_out_and_the_others_still_answer(mfc_bus: MfcBus) -> None:
    silent = mfc_bus.flowing
    mfc_bus.faults.inject(silent.name, "silent")
    with pytest.raises(DeviceTimeout):
        await silent.read()
    assert await answers(mfc_bus.other, mfc_bus.gas_of(mfc_bus.other))
    mfc_bus.faults.clear(silent.name)
    assert (await silent.read()).gas == mfc_bus.gas_of(silent)


async def test_a_corrupt_reply_is_a_protocol_error(mfc_bus: MfcBus) -> None:
    mfc_bus.faults.inject(mfc_bus.flowing.name, "corrupt")
    with pytest.raises(DeviceProtocolError):
        await mfc_bus.flowing.read()


async def test_a_torn_reply_is_an_error_and_the_unit_answers_again(mfc_bus: MfcBus) -> None:
    mfc = mfc_bus.flowing
    mfc_bus.faults.inject(mfc.name, "torn")
    with pytest.raises((DeviceProtocolError, DeviceTimeout)):
        await mfc.read()
    mfc_bus.faults.clear(mfc.name)
    await eventually(lambda: answers(mfc, mfc_bus.gas_of(mfc)), what="the unit to answer")


async def test_stuck_readings_freeze_while_the_true_flow_goes_on(mfc_bus: MfcBus) -> None:
    p, mfc = mfc_bus.protocol, mfc_bus.flowing
    await mfc.set_flow_slpm(p.flow_slpm)
    mfc_bus.step(0.5)
    before = await mfc.read()
    mfc_bus.faults.inject(mfc.name, "stuck")
    mfc_bus.step(5.0)
    stuck = await mfc.read()
    assert (stuck.mass_slpm, stuck.volumetric_slpm) == (before.mass_slpm, before.volumetric_slpm)
    assert mfc_bus.plant.gas_flow_slpm[p.flowing] == pytest.approx(p.flow_slpm,
                                                                   abs=p.resolution)
    mfc_bus.faults.clear(mfc.name)
    assert (await mfc.read()).mass_slpm == pytest.approx(p.flow_slpm, abs=p.resolution)


async def test_drift_offsets_the_reading_not_the_flow(mfc_bus: MfcBus) -> None:
    p, mfc = mfc_bus.protocol, mfc_bus.flowing
    await mfc.set_flow_slpm(p.flow_slpm)
    mfc_bus.step(5.0)
    mfc_bus.faults.inject(mfc.name, "drift", params={"offset": p.drift_slpm})
    assert (await mfc.read()).mass_slpm == pytest.approx(p.flow_slpm + p.drift_slpm,
                                                         abs=p.resolution)
    mfc_bus.faults.inject(mfc.name, "drift", params={"rate_per_s": 0.5})
    mfc_bus.step(2.0)
    assert (await mfc.read()).mass_slpm == pytest.approx(p.flow_slpm + 1.0,
                                                         abs=2 * p.resolution)
    mfc_bus.faults.inject(mfc.name, "drift", params={"offset": mfc.full_scale_slpm})
    assert "MOV" in (await mfc.read()).status  # the reading now exceeds full scale
    assert mfc_bus.plant.gas_flow_slpm[p.flowing] == pytest.approx(p.flow_slpm,
                                                                   abs=p.resolution)


async def test_disconnect_then_reconnect(mfc_bus: MfcBus) -> None:
    mfc = mfc_bus.flowing
    await mfc.read()
    mfc_bus.faults.inject(mfc.name, "disconnect")

    async def disconnected() -> bool:
        try:
            await mfc.read()
        except DeviceError as exc:
            return isinstance(exc, DeviceDisconnected)
        return False

    await eventually(disconnected, what="the link to drop")
    mfc_bus.faults.clear(mfc.name)
    await eventually(lambda: answers(mfc, mfc_bus.gas_of(mfc)), what="the unit to answer")


# -- the serial path -----------------------------------------------------------------------
async def test_the_bus_over_a_pty(mfc_bus: MfcBus) -> None:
    p = mfc_bus.protocol
    relay = PtyRelay(f"{p.name}_bus", "127.0.0.1", mfc_bus.server.port)
    await relay.start()
    endpoint = Endpoint(p.wire, path=relay.path)
    try:
        async with p.transport(endpoint, f"{p.name}_pty") as transport:
            drivers = {name: p.driver(transport, name) for name in p.devices}
            await drivers[p.flowing].set_flow_slpm(p.pty_flow_slpm)
            mfc_bus.step(5.0)
            readings = {name: await driver.read() for name, driver in drivers.items()}
            assert {name: r.gas for name, r in readings.items()} == p.gases
            assert readings[p.flowing].mass_slpm == pytest.approx(p.pty_flow_slpm,
                                                                  abs=p.resolution)
            with pytest.raises(DeviceTimeout):
                await p.absent(transport).read()
    finally:
        await relay.stop()


# == Alicat ASCII only ======================================================================
@pytest.fixture
async def gas_bus() -> AsyncIterator[MfcBus]:
    faults = FaultBoard()
    plant = Plant.from_line(LINE, faults)
    sims, server = await start_server(ASCII, faults, plant)
    transport = ASCII.transport(Endpoint("alicat-ascii", host="127.0.0.1", port=server.port),
                                "gas_bus")
    try:
        bus = MfcBus(ASCII, faults, plant, sims, server, transport)
        bus.drivers = {name: ASCII.driver(transport, name) for name in ASCII.devices}
        yield bus
    finally:
        await transport.close()
        await server.stop()


async def test_ascii_only_the_addressed_unit_answers(gas_bus: MfcBus) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gas_bus.server.port)
    try:
        writer.write(b"B\rC\rA$$R46\r")
        replies = [await asyncio.wait_for(reader.readuntil(b"\r"), 5) for _ in range(3)]
    finally:
        writer.close()
        await writer.wait_closed()
    # Had another unit answered too, its line would sit between these.
    assert replies[0].startswith(b"B ")
    assert replies[0].endswith(b" O2\r")
    assert replies[1].startswith(b"C ")
    assert replies[1].endswith(b" N2\r")
    assert replies[2] == b"A   046 = 1\r"


async def test_ascii_the_device_clamps_a_setpoint_beyond_full_scale(gas_bus: MfcBus) -> None:
    assert isinstance(gas_bus.transport, AsciiTransport)
    reply = await gas_bus.transport.request("AS999")  # a client without our range check
    assert reply.split()[5] == "050.00"
    gas_bus.step(5.0)
    reading = await gas_bus.drivers["mfc_ar"].read()
    assert reading.mass_slpm == pytest.approx(50.0, abs=0.01)
    assert reading.mass_slpm <= 50.0
    assert "MOV" not in reading.status


async def test_ascii_a_gas_change_shows_in_register_46(gas_bus: MfcBus) -> None:
    assert isinstance(gas_bus.transport, AsciiTransport)
    await gas_bus.drivers["mfc_ar"].select_gas(8)
    assert await gas_bus.transport.request("A$$R46") == "A   046 = 8"


@dataclass
class FixedReply:
    """A device on the bus that always answers the same line (a misbehaving neighbour)."""

    name: str
    unit: str
    reply: str

    def owns(self, line: str) -> bool:
        return line.startswith(self.unit)

    def handle(self, line: str) -> str | None:
        return self.reply

    def step(self, dt_s: float, wall_now: float) -> None:
        pass  # nothing moves in it


@pytest.mark.parametrize(
    ("unit", "reply"),
    [
        ("E", "F +087.21 +025.00 +000.00 +000.00 000.00 N2"),  # another unit's frame
        ("G", "?"),
        ("H", "H +087.21 +025.00 garbage"),
        ("I", "I   046 = 8"),  # a register echo where a frame belongs
    ],
)
async def test_ascii_bad_replies_are_protocol_errors(unit: str, reply: str) -> None:
    faults = FaultBoard()
    bus = AsciiBusServer("odd_bus", [FixedReply("odd", unit, reply)], faults)
    await bus.start()
    endpoint = Endpoint("alicat-ascii", host="127.0.0.1", port=bus.port)
    try:
        async with AsciiTransport("odd_bus", endpoint, timeout_s=TIMEOUT_S) as transport:
            driver = AlicatAsciiMfc(transport, unit, name="odd", full_scale_slpm=10, gas_number=8)
            with pytest.raises(DeviceProtocolError):
                await driver.read()
            with pytest.raises(DeviceProtocolError):
                await driver.select_gas(3)
    finally:
        await bus.stop()


async def test_ascii_the_public_alicat_client_drives_the_simulator(gas_bus: MfcBus) -> None:
    alicat = pytest.importorskip("alicat", reason="the `alicat` PyPI client is not installed")
    controller = alicat.FlowController(f"127.0.0.1:{gas_bus.server.port}", unit="B")
    try:
        state = await controller.get()
        assert state["gas"] == "O2"
        assert state["control_point"] == "mass flow"
        await controller.set_flow_rate(40.0)
        await controller.set_gas("N2")
        gas_bus.step(5.0)
        state = await controller.get()
        assert state["setpoint"] == 40.0
        assert state["mass_flow"] == pytest.approx(40.0, abs=0.01)
        assert state["gas"] == "N2"
    finally:
        await controller.close()
        await controller.hw.close()  # its close() leaves a TCP connection open
    sim = gas_bus.sims["mfc_o2"]
    assert isinstance(sim, AlicatAsciiMfcSim)
    assert sim.core.gas_number == 8


# == Alicat Modbus only =====================================================================
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
