"""The simulated serial buses as they are (issue 12 item 3): each RTU and ASCII bus is held to
its configured baud rate, a frame taking its characters x 10 bits on the wire plus RTU's 3.5
character gap, one frame at a time whoever is connected; Modbus TCP links are not paced. The
frame hooks see every frame with the time it crossed the line.

The assertions are lower bounds (the simulator is never faster than the wire) and the wire's
own bookkeeping, never an upper bound on a time: a slow machine only makes frames later."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from controller.config.bus_budget import CHAR_BITS, exchange_s, gap_chars, poll_exchanges
from controller.config.line import LineConfig, load_line_config
from drivers.mfc import AlicatAsciiMfc
from drivers.rf_generator import RfGenerator
from drivers.servo_axis import ServoAxis
from drivers.transports.ascii import AsciiTransport
from drivers.transports.endpoint import Endpoint
from drivers.transports.modbus import ModbusTransport
from simulators.line import LineSimulator

DEMO = load_line_config()
RTU_BAUD = 19200
ASCII_BAUD = 9600


def _slow_line() -> LineConfig:
    """The demo line with its drive bus and gas bus slowed down, so frame times are long."""
    buses = dict(DEMO.buses)
    buses["drive_bus"] = buses["drive_bus"].model_copy(update={"baudrate": RTU_BAUD})
    buses["gas_bus"] = buses["gas_bus"].model_copy(update={"baudrate": ASCII_BAUD})
    return DEMO.model_copy(update={"buses": buses})


@dataclass
class Frames:
    seen: list[tuple[str, bool, bytes, float]] = field(default_factory=list)

    def hook(self, bus: str, sending: bool, frame: bytes, at: float) -> None:
        self.seen.append((bus, sending, frame, at))

    def on(self, bus: str) -> list[tuple[bool, bytes, float]]:
        return [(s, f, t) for b, s, f, t in self.seen if b == bus]


@dataclass
class Rig:
    sim: LineSimulator
    frames: Frames

    def endpoint(self, device: str) -> Endpoint:
        ep = self.sim.endpoints()["devices"][device]
        return Endpoint(protocol=ep["protocol"], host=ep["host"], port=ep["port"])


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    frames = Frames()
    async with LineSimulator(_slow_line(), serve_ptys=False) as sim:
        for bus in sim.buses.values():
            bus.frame_hooks.append(frames.hook)
        yield Rig(sim, frames)


def _axis(transport: ModbusTransport, name: str) -> ServoAxis:
    config = DEMO.axis(name)
    return ServoAxis(transport, config.unit, name=name, motion=config.motion,
                     min_position_mm=config.min_position_mm,
                     max_position_mm=config.max_position_mm,
                     max_speed=config.max_speed, max_acceleration=config.acceleration)


def _chars_s(frame: bytes, baud: int) -> float:
    return len(frame) * CHAR_BITS / baud


async def test_an_rtu_read_takes_its_frames_time_on_the_wire(rig: Rig) -> None:
    (servo,) = poll_exchanges("servo_axis", "modbus-rtu")
    gap_s = gap_chars("modbus-rtu") * CHAR_BITS / RTU_BAUD
    # Request, its gap, then the reply's characters: the earliest the reply can be complete.
    least_s = (servo.request_bytes + servo.reply_bytes) * CHAR_BITS / RTU_BAUD + gap_s
    async with ModbusTransport("drive_bus", rig.endpoint("carriage"), timeout_s=1.0) as bus:
        axis = _axis(bus, "carriage")
        await axis.read()  # connected
        wire = rig.sim.buses["drive_bus"].wire
        assert wire is not None
        busy_before = wire.busy_s
        for _ in range(5):
            started = time.monotonic()
            await axis.read()
            assert time.monotonic() - started >= least_s
    assert wire.busy_s - busy_before == pytest.approx(5 * exchange_s(servo, RTU_BAUD,
                                                                     "modbus-rtu"))
    frames = rig.frames.on("drive_bus")[-10:]
    assert [(s, len(f)) for s, f, _ in frames] == [(False, 8), (True, 25)] * 5
    assert all(f[0] == DEMO.axis("carriage").unit for _, f, _ in frames)


async def test_a_bus_carries_one_frame_at_a_time_whoever_is_connected(rig: Rig) -> None:
    gap_s = gap_chars("modbus-rtu") * CHAR_BITS / RTU_BAUD
    async with ModbusTransport("drive_a", rig.endpoint("spindle"), timeout_s=1.0) as one, \
            ModbusTransport("drive_b", rig.endpoint("carriage"), timeout_s=1.0) as two:
        spindle, carriage = _axis(one, "spindle"), _axis(two, "carriage")

        async def reads(axis: ServoAxis) -> None:
            for _ in range(8):
                await axis.read()

        await asyncio.gather(reads(spindle), reads(carriage))
    frames = sorted(rig.frames.on("drive_bus"), key=lambda seen: seen[2])
    assert len(frames) >= 32
    # Each frame starts on the wire only after the previous one and its gap have left it.
    for (_, _, ended), (_, frame, arrived) in itertools.pairwise(frames):
        started = arrived - _chars_s(frame, RTU_BAUD)
        assert started >= ended + gap_s - 1e-9


async def test_an_ascii_poll_takes_its_characters_time(rig: Rig) -> None:
    (poll,) = poll_exchanges("mfc", "alicat-ascii", unit="A", gas_label="Ar")
    least_s = (poll.request_bytes + poll.reply_bytes) * CHAR_BITS / ASCII_BAUD
    async with AsciiTransport("gas_bus", rig.endpoint("mfc_ar"), timeout_s=1.0) as bus:
        mfc = AlicatAsciiMfc(bus, "A", name="mfc_ar", full_scale_slpm=50, gas_number=1)
        await mfc.read()
        started = time.monotonic()
        await mfc.read()
        assert time.monotonic() - started >= least_s
    request, reply = rig.frames.on("gas_bus")[-2:]
    assert request[:2] == (False, b"A\r")
    assert reply[0] is True and reply[1].startswith(b"A ") and len(reply[1]) == poll.reply_bytes


async def test_an_unpaced_bus_answers_without_holding_the_line(rig: Rig) -> None:
    wire = rig.sim.buses["drive_bus"].wire
    assert wire is not None
    wire.paced = False  # what the throughput bench does
    async with ModbusTransport("drive_bus", rig.endpoint("spindle"), timeout_s=1.0) as bus:
        axis = _axis(bus, "spindle")
        for _ in range(20):
            await axis.read()
    assert wire.busy_s == 0.0
    assert wire.frames >= 40


async def test_tcp_links_are_not_paced_but_their_frames_are_seen(rig: Rig) -> None:
    assert rig.sim.buses["rf_link"].wire is None
    rf_config = DEMO.rf()
    async with ModbusTransport("rf_link", rig.endpoint("rf"), timeout_s=1.0) as bus:
        rf = RfGenerator(bus, rf_config.unit, max_power_kw=rf_config.max_power_kw,
                         max_slew_kw_s=rf_config.max_slew_kw_s)
        await rf.rf_off()
    sent, received = rig.frames.on("rf_link")[-2:]
    assert sent[0] is False and received[0] is True
    assert sent[1][7] == 6 and received[1][7] == 6  # a write's request and its echo (MBAP + FC)
    assert received[2] >= sent[2]


@pytest.mark.parametrize(("time_scale", "paced"), [(1.0, True), (10.0, True), (200.0, False)])
async def test_serial_buses_are_paced_up_to_x10(time_scale: float, paced: bool) -> None:
    """Above x10 a frame's wire time times the scale would stretch every transition by
    process seconds (more SiCl4 than the recipe asks): fast runs are unpaced."""
    async with LineSimulator(DEMO, time_scale=time_scale, serve_ptys=False) as sim:
        wires = [bus.wire for bus in sim.buses.values() if bus.wire is not None]
        assert wires, "the demo line has serial buses"
        assert all(wire.paced is paced for wire in wires)
