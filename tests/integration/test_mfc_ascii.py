"""What only the Alicat ASCII MFCs have, on the contract's rig (test_mfc_contract.py): only
the addressed unit answers on the line, the device's own clamp, the gas register's echo, bad
replies from a misbehaving neighbour, and the public alicat client driving the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from drivers.errors import DeviceProtocolError
from drivers.mfc import AlicatAsciiMfc
from drivers.transports.ascii import AsciiTransport
from drivers.transports.endpoint import Endpoint
from simulators.ascii_bus import AsciiBusServer
from simulators.faults import FaultBoard
from simulators.mfc import AlicatAsciiMfcSim
from simulators.plant import Plant
from tests.integration.test_mfc_contract import ASCII, LINE, TIMEOUT_S, MfcBus, start_server


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


