"""The ASCII MFC driver against the simulated multi-drop gas bus (units A, B, C), over TCP and
over a pseudo-terminal, including link and value faults."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from controller.config.line import load_line_config
from drivers.errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceProtocolError,
    DeviceRangeError,
    DeviceTimeout,
)
from drivers.mfc import AlicatAsciiMfc
from drivers.transports.ascii import AsciiTransport
from drivers.transports.endpoint import Endpoint
from simulators.ascii_bus import AsciiBusServer, AsciiDevice
from simulators.faults import FaultBoard
from simulators.mfc import AlicatAsciiMfcSim
from simulators.plant import Plant
from simulators.pty_relay import PtyRelay
from tests.waiting import eventually

GAS_UNITS = {"mfc_ar": "A", "mfc_o2": "B", "mfc_n2": "C"}
TIMEOUT_S = 0.2


@dataclass
class GasBus:
    faults: FaultBoard
    plant: Plant
    sims: dict[str, AlicatAsciiMfcSim]
    bus: AsciiBusServer
    transport: AsciiTransport
    drivers: dict[str, AlicatAsciiMfc] = field(default_factory=dict)
    wall: float = 0.0

    def step(self, seconds: float, dt_s: float = 0.01) -> None:
        """Advance the simulated devices and plant by `seconds` of process time."""
        for _ in range(round(seconds / dt_s)):
            self.wall += dt_s
            for sim in self.sims.values():
                sim.step(dt_s, self.wall)
            self.plant.step(dt_s)


def make_sims(faults: FaultBoard, plant: Plant) -> dict[str, AlicatAsciiMfcSim]:
    line = load_line_config()
    return {name: AlicatAsciiMfcSim(name, line.mfc(name), plant, faults) for name in GAS_UNITS}


def make_driver(transport: AsciiTransport, name: str) -> AlicatAsciiMfc:
    config = load_line_config().mfc(name)
    assert isinstance(config.unit, str)
    return AlicatAsciiMfc(
        transport,
        config.unit,
        name=name,
        full_scale_slpm=config.full_scale_slpm,
        gas_number=config.gas_number,
    )


@pytest.fixture
async def gas_bus() -> AsyncIterator[GasBus]:
    faults = FaultBoard()
    plant = Plant.from_line(load_line_config(), faults)
    sims = make_sims(faults, plant)
    bus = AsciiBusServer("gas_bus", list[AsciiDevice](sims.values()), faults)
    await bus.start()
    endpoint = Endpoint("alicat-ascii", host="127.0.0.1", port=bus.port)
    transport = AsciiTransport("gas_bus", endpoint, timeout_s=TIMEOUT_S)
    try:
        setup = GasBus(faults, plant, sims, bus, transport)
        setup.drivers = {name: make_driver(transport, name) for name in GAS_UNITS}
        yield setup
    finally:
        await transport.close()
        await bus.stop()




# -- addressing ----------------------------------------------------------------------------
async def test_each_unit_answers_for_itself(gas_bus: GasBus) -> None:
    gases = {name: (await driver.read()).gas for name, driver in gas_bus.drivers.items()}
    assert gases == {"mfc_ar": "Ar", "mfc_o2": "O2", "mfc_n2": "N2"}
    reading = await gas_bus.drivers["mfc_o2"].read()
    assert reading.pressure_psia == pytest.approx(87.21)
    assert reading.temperature_c == 25.0
    assert reading.status == frozenset()


async def test_only_the_addressed_unit_answers(gas_bus: GasBus) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gas_bus.bus.port)
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


async def test_an_absent_unit_times_out(gas_bus: GasBus) -> None:
    absent = AlicatAsciiMfc(
        gas_bus.transport, "D", name="mfc_absent", full_scale_slpm=10, gas_number=8
    )
    with pytest.raises(DeviceTimeout):
        await absent.read()
    assert (await gas_bus.drivers["mfc_ar"].read()).gas == "Ar"  # the bus is still fine


# -- flow dynamics -------------------------------------------------------------------------
async def test_first_order_response_reaches_the_setpoint(gas_bus: GasBus) -> None:
    o2 = gas_bus.drivers["mfc_o2"]
    await o2.set_flow_slpm(80.0)
    tau = gas_bus.plant.config.mfc_time_constant_s
    gas_bus.step(tau)
    after_tau = await o2.read()
    assert after_tau.setpoint_slpm == 80.0
    assert after_tau.mass_slpm == pytest.approx(80.0 * (1 - math.exp(-1)), abs=0.01)
    gas_bus.step(10 * tau)
    settled = await o2.read()
    assert settled.mass_slpm == pytest.approx(80.0, abs=0.01)
    assert gas_bus.plant.gas_flow_slpm["mfc_o2"] == pytest.approx(80.0, abs=0.01)
    assert 0 < settled.volumetric_slpm < settled.mass_slpm  # 6 bar a in the flow body


async def test_out_of_range_setpoints_are_refused_before_sending(gas_bus: GasBus) -> None:
    ar = gas_bus.drivers["mfc_ar"]
    sent = gas_bus.transport.requests
    for bad in (-0.1, 50.01, math.nan, math.inf):
        with pytest.raises(DeviceRangeError):
            await ar.set_flow_slpm(bad)
    assert gas_bus.transport.requests == sent
    await ar.set_flow_slpm(50.0)  # full scale itself is fine


async def test_the_device_clamps_a_setpoint_beyond_full_scale(gas_bus: GasBus) -> None:
    reply = await gas_bus.transport.request("AS999")  # a client without our range check
    assert reply.split()[5] == "050.00"
    gas_bus.step(5.0)
    reading = await gas_bus.drivers["mfc_ar"].read()
    assert reading.mass_slpm == pytest.approx(50.0, abs=0.01)
    assert reading.mass_slpm <= 50.0
    assert "MOV" not in reading.status


async def test_closed_master_valve_stops_every_gas(gas_bus: GasBus) -> None:
    n2 = gas_bus.drivers["mfc_n2"]
    await n2.set_flow_slpm(30.0)
    gas_bus.step(3.0)
    gas_bus.plant.master_valve_open = False
    gas_bus.step(0.05)
    assert (await n2.read()).mass_slpm == 0.0
    assert gas_bus.plant.gas_flow_slpm["mfc_n2"] == 0.0


async def test_gas_select_and_valve_hold(gas_bus: GasBus) -> None:
    ar = gas_bus.drivers["mfc_ar"]
    await ar.select_gas(8)
    assert (await ar.read()).gas == "N2"
    assert await gas_bus.transport.request("A$$R46") == "A   046 = 8"
    await ar.select_gas(1)
    await ar.set_flow_slpm(20.0)
    gas_bus.step(3.0)
    await ar.hold_valve_closed()
    gas_bus.step(0.05)
    held = await ar.read()
    assert held.valve_held
    assert held.mass_slpm == 0.0
    await ar.cancel_hold()
    gas_bus.step(5.0)
    assert (await ar.read()).mass_slpm == pytest.approx(20.0, abs=0.01)


# -- bad replies ---------------------------------------------------------------------------
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


@pytest.mark.parametrize(
    ("unit", "reply"),
    [
        ("E", "F +087.21 +025.00 +000.00 +000.00 000.00 N2"),  # another unit's frame
        ("G", "?"),
        ("H", "H +087.21 +025.00 garbage"),
        ("I", "I   046 = 8"),  # a register echo where a frame belongs
    ],
)
async def test_bad_replies_are_protocol_errors(unit: str, reply: str) -> None:
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


# -- faults --------------------------------------------------------------------------------
async def test_silent_unit_times_out_and_the_others_still_answer(gas_bus: GasBus) -> None:
    gas_bus.faults.inject("mfc_o2", "silent")
    with pytest.raises(DeviceTimeout):
        await gas_bus.drivers["mfc_o2"].read()
    assert (await gas_bus.drivers["mfc_n2"].read()).gas == "N2"
    gas_bus.faults.clear("mfc_o2")
    assert (await gas_bus.drivers["mfc_o2"].read()).gas == "O2"


async def test_corrupt_reply_is_a_protocol_error(gas_bus: GasBus) -> None:
    gas_bus.faults.inject("mfc_ar", "corrupt")
    with pytest.raises(DeviceProtocolError):
        await gas_bus.drivers["mfc_ar"].read()


async def test_torn_reply_is_an_error(gas_bus: GasBus) -> None:
    gas_bus.faults.inject("mfc_ar", "torn")
    with pytest.raises((DeviceProtocolError, DeviceTimeout)):
        await gas_bus.drivers["mfc_ar"].read()
    gas_bus.faults.clear("mfc_ar")
    assert (await gas_bus.drivers["mfc_ar"].read()).gas == "Ar"


async def test_stuck_readings_freeze(gas_bus: GasBus) -> None:
    n2 = gas_bus.drivers["mfc_n2"]
    await n2.set_flow_slpm(60.0)
    gas_bus.step(0.5)
    before = await n2.read()
    gas_bus.faults.inject("mfc_n2", "stuck")
    gas_bus.step(5.0)
    stuck = await n2.read()
    assert (stuck.mass_slpm, stuck.volumetric_slpm) == (before.mass_slpm, before.volumetric_slpm)
    assert gas_bus.plant.gas_flow_slpm["mfc_n2"] == pytest.approx(60.0, abs=0.01)  # true flow
    gas_bus.faults.clear("mfc_n2")
    assert (await n2.read()).mass_slpm == pytest.approx(60.0, abs=0.01)


async def test_drift_offsets_the_reading(gas_bus: GasBus) -> None:
    ar = gas_bus.drivers["mfc_ar"]
    await ar.set_flow_slpm(30.0)
    gas_bus.step(5.0)
    gas_bus.faults.inject("mfc_ar", "drift", params={"offset": 1.5})
    assert (await ar.read()).mass_slpm == pytest.approx(31.5, abs=0.01)
    gas_bus.faults.inject("mfc_ar", "drift", params={"rate_per_s": 0.5})
    gas_bus.step(2.0)
    assert (await ar.read()).mass_slpm == pytest.approx(31.0, abs=0.02)
    gas_bus.faults.inject("mfc_ar", "drift", params={"offset": 25.0})
    assert "MOV" in (await ar.read()).status  # the reading now exceeds full scale
    assert gas_bus.plant.gas_flow_slpm["mfc_ar"] == pytest.approx(30.0, abs=0.01)


async def test_disconnect_then_reconnect(gas_bus: GasBus) -> None:
    ar = gas_bus.drivers["mfc_ar"]
    await ar.read()
    gas_bus.faults.inject("mfc_ar", "disconnect")

    async def failing() -> bool:
        try:
            await ar.read()
        except DeviceError as exc:
            return isinstance(exc, DeviceDisconnected)
        return False

    await eventually(failing)
    gas_bus.faults.clear("mfc_ar")

    async def answering() -> bool:
        try:
            return (await ar.read()).gas == "Ar"
        except DeviceError:
            return False

    await eventually(answering)


# -- the serial path -----------------------------------------------------------------------
async def test_the_bus_over_a_pty(gas_bus: GasBus) -> None:
    relay = PtyRelay("gas_bus", "127.0.0.1", gas_bus.bus.port)
    await relay.start()
    endpoint = Endpoint("alicat-ascii", path=relay.path)
    try:
        async with AsciiTransport("gas_bus_pty", endpoint, timeout_s=TIMEOUT_S) as transport:
            drivers = {name: make_driver(transport, name) for name in GAS_UNITS}
            await drivers["mfc_o2"].set_flow_slpm(100.0)
            gas_bus.step(5.0)
            readings = {name: await driver.read() for name, driver in drivers.items()}
            assert {name: r.gas for name, r in readings.items()} == {
                "mfc_ar": "Ar",
                "mfc_o2": "O2",
                "mfc_n2": "N2",
            }
            assert readings["mfc_o2"].mass_slpm == pytest.approx(100.0, abs=0.01)
            absent = AlicatAsciiMfc(
                transport, "D", name="mfc_absent", full_scale_slpm=10, gas_number=8
            )
            with pytest.raises(DeviceTimeout):
                await absent.read()
    finally:
        await relay.stop()


# -- an existing Alicat client ---------------------------------------------------------------
async def test_the_public_alicat_client_drives_the_simulator(gas_bus: GasBus) -> None:
    alicat = pytest.importorskip("alicat", reason="the `alicat` PyPI client is not installed")
    controller = alicat.FlowController(f"127.0.0.1:{gas_bus.bus.port}", unit="B")
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
    assert gas_bus.sims["mfc_o2"].core.gas_number == 8
