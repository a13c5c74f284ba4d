"""The diameter gauge driver against its simulator over a point-to-point ASCII line, reached
over TCP (as through a serial device server) and over a pseudo-terminal."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from controller.config.line import load_line_config
from drivers.diameter_gauge import DiameterGauge, GaugeReading
from drivers.errors import DeviceDisconnected, DeviceProtocolError, DeviceTimeout
from drivers.transports.ascii import AsciiTransport
from drivers.transports.endpoint import Endpoint
from simulators.ascii_bus import AsciiBusServer, AsciiDevice
from simulators.diameter_gauge import DiameterGaugeSim
from simulators.faults import FaultBoard
from simulators.plant import Plant
from simulators.pty_relay import PtyRelay
from tests.waiting import eventually, first_failure

T = TypeVar("T")


@dataclass
class Rig:
    faults: FaultBoard
    plant: Plant
    sim: DiameterGaugeSim
    bus: AsciiBusServer
    transport: AsciiTransport
    gauge: DiameterGauge


async def _serve(
    device: AsciiDevice, faults: FaultBoard, link: str
) -> AsyncIterator[tuple[AsciiBusServer, AsciiTransport]]:
    bus = AsciiBusServer("gauge_line", [device], faults)
    await bus.start()
    relay: PtyRelay | None = None
    if link == "pty":
        relay = PtyRelay("gauge_line", "127.0.0.1", bus.port)
        await relay.start()
        endpoint = Endpoint("ascii", path=relay.path, baudrate=9600)
    else:
        endpoint = Endpoint("ascii", host="127.0.0.1", port=bus.port, baudrate=9600)
    transport = AsciiTransport("gauge_line", endpoint, timeout_s=0.2)
    try:
        yield bus, transport
    finally:
        await transport.close()
        if relay is not None:
            await relay.stop()
        await bus.stop()


async def _rig(link: str) -> AsyncIterator[Rig]:
    line = load_line_config()
    faults = FaultBoard()
    plant = Plant.from_line(line, faults)
    sim = DiameterGaugeSim("diameter_gauge", line.gauge(), plant, faults)
    async for bus, transport in _serve(sim, faults, link):
        yield Rig(faults, plant, sim, bus, transport, DiameterGauge(transport))


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async for r in _rig("tcp"):
        yield r


@pytest.fixture(params=["tcp", "pty"])
async def any_rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    async for r in _rig(request.param):
        yield r






# -- wire level: pinned frames -------------------------------------------------------------------
async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r"), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_pinned_frames(rig: Rig) -> None:
    assert await _exchange(rig.bus.port, b"ID\r") == b"ID POVD-LM120,1.02\r"
    assert await _exchange(rig.bus.port, b"XYZ\r") == b"ER,01\r"
    assert await _exchange(rig.bus.port, b"MX\r") == b"ER,02\r"
    # The first reading of the seeded noise stream, on the 30 mm bait rod.
    assert await _exchange(rig.bus.port, b"M\r") == b"D +0030.00 OK\r"
    rig.plant.rod_diameter_mm = 130.0
    assert await _exchange(rig.bus.port, b"M\r") == b"D +0000.00 ERR\r"


# -- driver against simulator --------------------------------------------------------------------
async def test_reads_the_rod_diameter(any_rig: Rig) -> None:
    assert await any_rig.gauge.identify() == "POVD-LM120,1.02"
    any_rig.plant.rod_diameter_mm = 41.237
    readings = [await any_rig.gauge.read() for _ in range(20)]
    values = [r.diameter_mm for r in readings if r.valid and r.diameter_mm is not None]
    assert len(values) == 20
    assert all(abs(v - 41.237) < 0.02 for v in values)
    assert all(round(v * 100) == pytest.approx(v * 100, abs=1e-6) for v in values)  # 0.01 mm


def test_noise_is_small_and_repeatable() -> None:
    line = load_line_config()

    def stream() -> list[float]:
        faults = FaultBoard()
        plant = Plant.from_line(line, faults)
        plant.rod_diameter_mm = 48.0
        sim = DiameterGaugeSim("diameter_gauge", line.gauge(), plant, faults)
        return [sim.measure().diameter_mm or 0.0 for _ in range(500)]

    first = stream()
    assert first == stream()
    assert max(abs(v - 48.0) for v in first) < 0.02
    assert statistics.pstdev(first) < 0.01
    assert len(set(first)) > 1  # there is noise


async def test_out_of_range_is_invalid(rig: Rig) -> None:
    config = load_line_config().gauge()
    rig.plant.rod_diameter_mm = config.max_mm + 1
    assert await rig.gauge.read() == GaugeReading(diameter_mm=None, valid=False)
    rig.plant.rod_diameter_mm = config.min_mm - 1
    assert await rig.gauge.read() == GaugeReading(diameter_mm=None, valid=False)
    rig.plant.rod_diameter_mm = 60.0
    assert (await rig.gauge.read()).valid


async def test_gauge_invalid_fault(rig: Rig) -> None:
    rig.faults.inject("diameter_gauge", "gauge_invalid")
    assert await rig.gauge.read() == GaugeReading(diameter_mm=None, valid=False)
    rig.faults.clear("diameter_gauge", "gauge_invalid")
    assert (await rig.gauge.read()).valid


async def test_stuck_and_drift(rig: Rig) -> None:
    rig.faults.inject("diameter_gauge", "stuck")
    frozen = await rig.gauge.read()
    rig.plant.rod_diameter_mm = 45.0
    for _ in range(3):
        assert await rig.gauge.read() == frozen
    rig.faults.clear("diameter_gauge", "stuck")
    reading = await rig.gauge.read()
    assert reading.diameter_mm == pytest.approx(45.0, abs=0.02)

    rig.faults.inject("diameter_gauge", "drift", params={"offset": 0.5})
    reading = await rig.gauge.read()
    assert reading.diameter_mm == pytest.approx(45.5, abs=0.02)
    rig.faults.inject("diameter_gauge", "drift", params={"rate_per_s": 0.01})
    for _ in range(100):
        rig.sim.step(1.0, 0.0)  # 100 s of process time: +1 mm
    reading = await rig.gauge.read()
    assert reading.diameter_mm == pytest.approx(46.0, abs=0.02)
    rig.faults.clear("diameter_gauge", "drift")
    rig.sim.step(1.0, 0.0)
    reading = await rig.gauge.read()
    assert reading.diameter_mm == pytest.approx(45.0, abs=0.02)


class _Babbler:
    """A device that answers every line with a fixed reply: malformed frames on demand."""

    name = "diameter_gauge"

    def __init__(self, reply: str) -> None:
        self.reply = reply

    def owns(self, line: str) -> bool:
        return True

    def handle(self, line: str) -> str | None:
        return self.reply


@pytest.mark.parametrize("reply", ["D 30.00 OK", "D +0030.00", "ER,01", "garbage"])
async def test_malformed_reply_is_a_protocol_error(reply: str) -> None:
    async for _, transport in _serve(_Babbler(reply), FaultBoard(), "tcp"):
        gauge = DiameterGauge(transport)
        with pytest.raises(DeviceProtocolError):
            await gauge.read()
        with pytest.raises(DeviceProtocolError):
            await gauge.identify()


# -- link faults ----------------------------------------------------------------------------------
async def test_silent_gauge_times_out(rig: Rig) -> None:
    rig.faults.inject("diameter_gauge", "silent")
    with pytest.raises(DeviceTimeout):
        await rig.gauge.read()
    rig.faults.clear("diameter_gauge", "silent")
    assert (await rig.gauge.read()).valid


@pytest.mark.parametrize("kind", ["corrupt", "torn"])
async def test_damaged_reply_is_a_protocol_error(rig: Rig, kind: str) -> None:
    rig.faults.inject("diameter_gauge", kind)
    with pytest.raises(DeviceProtocolError):
        await rig.gauge.read()
    rig.faults.clear("diameter_gauge", kind)
    assert (await eventually(rig.gauge.read, lambda r: r.valid)).valid


async def test_disconnect_and_reconnect(any_rig: Rig) -> None:
    assert (await any_rig.gauge.read()).valid
    any_rig.faults.inject("diameter_gauge", "disconnect")
    error = await first_failure(any_rig.gauge.read)
    assert isinstance(error, (DeviceDisconnected, DeviceTimeout))
    any_rig.faults.clear("diameter_gauge", "disconnect")
    reading = await eventually(any_rig.gauge.read, lambda r: r.valid)
    assert reading.diameter_mm == pytest.approx(30.0, abs=0.02)
