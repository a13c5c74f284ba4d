"""The MFC contract: both drivers against their simulated multi-drop buses, over TCP and over a
pseudo-terminal, including link and value faults. One behaviour, two protocols:

- Alicat ASCII: the process gases (Ar, O2, N2 as units A, B, C) on one serial line;
- Alicat Modbus RTU: the precursors (SiCl4 unit 1, dopant unit 2) on one RTU bus.

What only one protocol has (its bytes on the wire, its quirks) is in test_mfc_ascii.py and
test_mfc_modbus.py, on the same rig."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import pytest

from controller.config.line import load_line_config
from drivers.errors import (
    DeviceDisconnected,
    DeviceError,
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
