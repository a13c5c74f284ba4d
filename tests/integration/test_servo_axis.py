"""The servo drive driver against its simulator: three drives on one Modbus RTU bus (units 1-3),
reached over TCP (as through a serial device server) and over a pseudo-terminal.

The simulators are stepped explicitly in process time, never by sleeping; only the link-fault
tests wait, and they poll for the outcome with a generous deadline."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest

from controller.config.line import LineConfig, ServoAxisConfig, load_line_config
from drivers.codecs import servo_map
from drivers.codecs.servo_map import AlarmCode, AxisMode
from drivers.errors import (
    DeviceDisconnected,
    DeviceExceptionResponse,
    DeviceProtocolError,
    DeviceRangeError,
    DeviceTimeout,
)
from drivers.servo_axis import AxisStatus, ServoAxis
from drivers.transports.endpoint import Endpoint
from drivers.transports.modbus import ModbusTransport
from simulators.faults import FaultBoard
from simulators.modbus_bus import ILLEGAL_VALUE, ModbusBusServer
from simulators.plant import Plant
from simulators.pty_relay import PtyRelay
from simulators.servo_axis import ServoAxisSim, advance_to_position, advance_to_velocity
from tests.waiting import eventually, first_failure

AXES = ("spindle", "carriage", "torch_slide")
T = TypeVar("T")


@dataclass
class Rig:
    line: LineConfig
    faults: FaultBoard
    plant: Plant
    sims: dict[str, ServoAxisSim]
    bus: ModbusBusServer
    transport: ModbusTransport
    axes: dict[str, ServoAxis]
    wall: float = 0.0  # the drives' wall clock (their comm watchdog); only tick() moves it

    def run(self, seconds: float, dt_s: float = 0.1) -> None:
        """Advance the drives and the plant by `seconds` of process time."""
        for _ in range(round(seconds / dt_s)):
            self.step(dt_s)

    def step(self, dt_s: float) -> None:
        for sim in self.sims.values():
            sim.step(dt_s, self.wall)
        self.plant.step(dt_s)

    def tick(self, wall_s: float) -> None:
        """Advance wall time and the same process time by wall_s."""
        self.wall += wall_s
        self.step(wall_s)


def make_axis(transport: ModbusTransport, name: str, config: ServoAxisConfig) -> ServoAxis:
    return ServoAxis(
        transport,
        config.unit,
        name=name,
        motion=config.motion,
        min_position_mm=config.min_position_mm,
        max_position_mm=config.max_position_mm,
        max_speed=config.max_speed,
        max_acceleration=config.acceleration,
    )


async def _rig(link: str) -> AsyncIterator[Rig]:
    line = load_line_config()
    faults = FaultBoard()
    plant = Plant.from_line(line, faults)
    sims = {name: ServoAxisSim(name, line.axis(name), plant, faults) for name in AXES}
    bus = ModbusBusServer("drive_bus", "rtu", list(sims.values()), faults)
    await bus.start()
    relay: PtyRelay | None = None
    if link == "pty":
        relay = PtyRelay("drive_bus", "127.0.0.1", bus.port)
        await relay.start()
        endpoint = Endpoint("modbus-rtu", path=relay.path, baudrate=115200)
    else:
        endpoint = Endpoint("modbus-rtu", host="127.0.0.1", port=bus.port, baudrate=115200)
    transport = ModbusTransport("drive_bus", endpoint, timeout_s=0.2)
    axes = {name: make_axis(transport, name, line.axis(name)) for name in AXES}
    try:
        yield Rig(line, faults, plant, sims, bus, transport, axes)
    finally:
        await transport.close()
        if relay is not None:
            await relay.stop()
        await bus.stop()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async for r in _rig("tcp"):
        yield r


@pytest.fixture(params=["tcp", "pty"])
async def any_rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    async for r in _rig(request.param):
        yield r






def run_until(
    rig: Rig, name: str, done: Callable[[ServoAxisSim], bool], dt_s: float, limit_s: float
) -> list[float]:
    """Step until ``done``; returns the true positions seen at every step."""
    sim = rig.sims[name]
    seen = [sim.position]
    for _ in range(round(limit_s / dt_s)):
        rig.step(dt_s)
        seen.append(sim.position)
        if done(sim):
            return seen
    raise AssertionError(f"{name} did not finish within {limit_s} s")


def at_rest(sim: ServoAxisSim) -> bool:
    return sim.profile is None and sim.velocity == 0.0


async def home_carriage(rig: Rig) -> ServoAxis:
    carriage = rig.axes["carriage"]
    await carriage.enable()
    await carriage.home()
    run_until(rig, "carriage", lambda s: s.homed, 0.5, 60)
    return carriage


# -- wire level: pinned RTU frames --------------------------------------------------------------
async def _exchange(port: int, request: bytes, reply_len: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(reply_len), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_pinned_read_status_frame(rig: Rig) -> None:
    # Unit 2 (carriage), function 4, IR 0-8: powered, at park 0 mm, not enabled.
    request = bytes.fromhex("02 04 00 00 00 09 30 3f")
    reply = await _exchange(rig.bus.port, request, 23)
    assert reply == bytes.fromhex("02 04 12 0080 0000 00000000 00000000 0000 0000 0000 15 ee")
    # Unit 3 (torch slide) parks at 150 mm: 150,000 = 0x000249F0, high word first.
    reply = await _exchange(rig.bus.port, bytes.fromhex("03 04 00 00 00 09 31 ee"), 23)
    assert reply == bytes.fromhex("03 04 12 0080 0000 000249f0 00000000 0000 0000 0000 1c 5d")


async def test_pinned_write_frames(rig: Rig) -> None:
    # Function 6, HR 0 = ENABLE: echoed, and the carriage is enabled.
    enable = bytes.fromhex("02 06 00 00 00 01 48 39")
    assert await _exchange(rig.bus.port, enable, 8) == enable
    assert rig.sims["carriage"].enabled
    # ENABLE | START with no mode set: exception 3 (illegal data value).
    start = bytes.fromhex("02 06 00 00 00 03 c9 f8")
    assert await _exchange(rig.bus.port, start, 5) == bytes.fromhex("02 86 03 f2 61")


# -- the bus --------------------------------------------------------------------------------------
async def test_three_drives_on_one_bus(any_rig: Rig) -> None:
    statuses = {name: await axis.read() for name, axis in any_rig.axes.items()}
    assert statuses["spindle"].position_mm == 0.0
    assert statuses["carriage"].position_mm == 0.0
    assert statuses["torch_slide"].position_mm == 150.0
    for status in statuses.values():
        assert status.powered
        assert not status.enabled
        assert not status.homed
        assert not status.alarm
        assert status.mode is AxisMode.NONE
    # Commands reach only their own unit.
    await any_rig.axes["spindle"].enable()
    assert [s.enabled for s in any_rig.sims.values()] == [True, False, False]


async def test_absent_unit_times_out(any_rig: Rig) -> None:
    ghost = ServoAxis(
        any_rig.transport, 4, name="ghost", motion="rotary", max_speed=100, max_acceleration=20
    )
    with pytest.raises(DeviceTimeout):
        await ghost.read()
    # The bus still serves the drives that are there.
    assert (await any_rig.axes["carriage"].read()).powered


async def test_home_and_move_absolute_over_the_wire(any_rig: Rig) -> None:
    slide = any_rig.axes["torch_slide"]
    await slide.enable()
    await slide.home()
    status = await slide.read()
    assert status.mode is AxisMode.HOMING
    assert not status.homed  # homing forgets the reference until the home is found
    # Homing runs to the negative end at setup speed (10 % of 600 mm/min): 150 mm in ~150 s.
    run_until(any_rig, "torch_slide", lambda s: s.homed, 3.0, 400)
    status = await slide.read()
    assert status.homed
    assert status.in_position
    assert status.position_mm == 0.0
    assert any_rig.plant.torch_slide_mm == 0.0

    await slide.move_absolute(100.0, 600.0)
    seen = run_until(any_rig, "torch_slide", at_rest, 2.5, 120)
    assert max(seen) == 100.0  # reached, never overshot
    status = await slide.read()
    assert status.in_position
    assert not status.moving
    assert status.position_mm == 100.0
    assert status.mode is AxisMode.POSITION_ABSOLUTE
    assert any_rig.plant.torch_slide_mm == 100.0


# -- motion ---------------------------------------------------------------------------------------
async def test_move_absolute_with_large_steps_never_overshoots(rig: Rig) -> None:
    carriage = await home_carriage(rig)
    await carriage.move_absolute(600.0, 3000.0)
    status = await carriage.read()
    assert not status.in_position
    # Steps of 3 s process time: a high time scale. Still exactly 600, never past it.
    seen = run_until(rig, "carriage", at_rest, 3.0, 60)
    assert max(seen) == 600.0
    assert seen == sorted(seen)
    await carriage.move_relative(-250.5, 1500.0)
    seen = run_until(rig, "carriage", at_rest, 1.7, 60)
    assert min(seen) == 349.5
    status = await carriage.read()
    assert status.position_mm == 349.5
    assert status.in_position
    assert rig.plant.carriage_mm == 349.5


async def test_acceleration_limit_is_respected(rig: Rig) -> None:
    carriage = await home_carriage(rig)
    await carriage.move_absolute(1000.0, 3000.0, acceleration=100.0)  # mm/s^2
    sim = rig.sims["carriage"]
    dt = 0.05
    velocities = [sim.velocity]
    while True:
        rig.step(dt)
        velocities.append(sim.velocity)  # mm/s
        if at_rest(sim):
            break
    steps = [abs(b - a) / dt for a, b in itertools.pairwise(velocities)]
    assert max(steps) <= 100.0 + 1e-6
    assert max(velocities) == pytest.approx(3000.0 / 60)
    # The drive reports the same through the wire: 0.01 mm/min resolution.
    await carriage.move_absolute(500.0, 3000.0, acceleration=100.0)
    rig.run(0.2, 0.05)
    status = await carriage.read()
    assert status.velocity == pytest.approx(-100.0 * 0.2 * 60, abs=0.02)  # mm/min


async def test_spindle_velocity_mode(rig: Rig) -> None:
    spindle = rig.axes["spindle"]
    await spindle.enable()
    await spindle.set_velocity(30.0)
    rig.run(0.5, 0.05)
    status = await spindle.read()
    assert status.velocity == pytest.approx(10.0)  # 20 rpm/s for 0.5 s
    assert status.moving
    assert not status.in_position
    rig.run(2.0, 0.5)
    status = await spindle.read()
    assert status.velocity == 30.0
    assert status.in_position  # at speed
    assert status.mode is AxisMode.VELOCITY
    assert rig.plant.spindle_rpm == 30.0
    await spindle.set_velocity(-10.0)
    rig.run(3.0, 1.0)
    assert (await spindle.read()).velocity == -10.0
    await spindle.stop()
    rig.run(1.0, 1.0)
    status = await spindle.read()
    assert status.velocity == 0.0
    assert not status.moving
    assert status.enabled


async def test_rotary_homing_and_refused_position_moves(rig: Rig) -> None:
    spindle = rig.axes["spindle"]
    await spindle.enable()
    await spindle.home()
    status = await spindle.read()
    assert status.homed
    assert status.mode is AxisMode.HOMING
    before = rig.transport.requests
    with pytest.raises(DeviceRangeError):
        await spindle.move_absolute(0.0, 10.0)
    with pytest.raises(DeviceRangeError):
        await spindle.set_velocity(101.0)
    assert rig.transport.requests == before


async def test_range_checks_send_nothing(rig: Rig) -> None:
    carriage = rig.axes["carriage"]
    before = rig.transport.requests
    for call in (
        carriage.move_absolute(1200.5, 100.0),
        carriage.move_absolute(-1.0, 100.0),
        carriage.move_absolute(600.0, 3001.0),
        carriage.move_absolute(600.0, 0.0),
        carriage.move_absolute(600.0, 100.0, acceleration=501.0),
        carriage.move_relative(1300.0, 100.0),
        carriage.jog(2, 100.0),
        carriage.jog(1, 3500.0),
        carriage.set_velocity(-3001.0),
    ):
        with pytest.raises(DeviceRangeError):
            await call
    assert rig.transport.requests == before


async def test_drive_refuses_moves_it_cannot_make(rig: Rig) -> None:
    carriage = rig.axes["carriage"]
    with pytest.raises(DeviceExceptionResponse) as info:
        await carriage.move_relative(100.0, 1000.0)  # not enabled
    assert info.value.exception_code == ILLEGAL_VALUE
    await carriage.enable()
    with pytest.raises(DeviceExceptionResponse):
        await carriage.move_absolute(100.0, 1000.0)  # not homed
    with pytest.raises(DeviceExceptionResponse):
        await carriage.move_relative(-10.0, 1000.0)  # below the travel (at 0 mm)
    await carriage.move_relative(100.0, 1000.0)  # relative moves need no homing
    run_until(rig, "carriage", at_rest, 1.0, 60)
    assert (await carriage.read()).position_mm == 100.0
    # A write of a speed beyond the drive's maximum is refused at the register.
    with pytest.raises(DeviceExceptionResponse):
        await rig.transport.write_registers(2, 4, [0x0004, 0x93E1])  # 3000.01 mm/min


async def test_jog_stops_at_travel_limits(rig: Rig) -> None:
    carriage = rig.axes["carriage"]
    await carriage.enable()
    await carriage.jog(-1, 500.0)
    rig.run(0.2, 0.1)
    status = await carriage.read()
    assert status.limit_negative  # already at 0: nowhere to go
    assert not status.moving

    await carriage.jog(+1, 3000.0)
    rig.run(1.0, 0.5)
    status = await carriage.read()
    assert status.mode is AxisMode.JOG
    assert status.moving
    seen = run_until(rig, "carriage", at_rest, 2.0, 60)
    assert max(seen) == 1200.0
    status = await carriage.read()
    assert status.limit_positive
    assert not status.limit_negative
    assert status.position_mm == 1200.0

    await carriage.jog(-1, 600.0)
    rig.run(2.0, 0.5)
    assert (await carriage.read()).moving
    await carriage.stop()
    run_until(rig, "carriage", at_rest, 0.1, 10)
    status = await carriage.read()
    assert not status.moving
    assert not status.limit_positive
    assert status.enabled
    assert 1170.0 < status.position_mm < 1200.0


async def test_stop_decelerates_short_of_the_target(rig: Rig) -> None:
    carriage = await home_carriage(rig)
    await carriage.move_absolute(1200.0, 3000.0)
    rig.run(2.0, 0.5)
    await carriage.stop()
    sim = rig.sims["carriage"]
    stopping_from = sim.position
    speed_mm_s = sim.velocity
    seen = run_until(rig, "carriage", at_rest, 0.02, 5)
    assert max(seen) == pytest.approx(stopping_from + speed_mm_s**2 / (2 * 500.0))
    status = await carriage.read()
    assert not status.moving
    assert not status.in_position  # the target was not reached
    assert status.position_mm < 1200.0


async def test_drive_alarm_and_reset(rig: Rig) -> None:
    spindle = rig.axes["spindle"]
    await spindle.enable()
    await spindle.set_velocity(30.0)
    rig.run(2.0, 0.5)
    rig.faults.inject("spindle", "drive_alarm", params={"code": 5})
    rig.run(0.5, 0.5)
    status = await spindle.read()
    assert status.alarm
    assert status.alarm_code == 5
    assert not status.enabled
    rig.run(2.0, 0.5)
    assert (await spindle.read()).velocity == 0.0
    # The fault is still there: reset leaves the alarm latched, enable is refused.
    await spindle.reset_alarm()
    assert (await spindle.read()).alarm
    with pytest.raises(DeviceExceptionResponse):
        await spindle.enable()
    rig.faults.clear("spindle", "drive_alarm")
    rig.run(0.5, 0.5)
    assert (await spindle.read()).alarm  # latched until reset
    await spindle.reset_alarm()
    status = await spindle.read()
    assert not status.alarm
    assert status.alarm_code == 0
    assert not status.enabled
    await spindle.enable()
    assert (await spindle.read()).enabled


async def test_estop_disables_every_drive(rig: Rig) -> None:
    spindle = rig.axes["spindle"]
    carriage = await home_carriage(rig)
    await spindle.enable()
    await spindle.set_velocity(30.0)
    await carriage.move_absolute(1200.0, 3000.0)
    rig.run(2.0, 0.5)
    rig.plant.drives_powered = False
    rig.run(0.1, 0.1)
    for axis in (spindle, carriage):
        status = await axis.read()
        assert not status.enabled
        assert not status.powered
    rig.run(3.0, 0.5)
    assert (await spindle.read()).velocity == 0.0
    assert not (await carriage.read()).moving
    assert rig.plant.spindle_rpm == 0.0
    with pytest.raises(DeviceExceptionResponse):
        await spindle.enable()
    rig.plant.drives_powered = True
    rig.run(0.1, 0.1)
    status = await spindle.read()
    assert status.powered
    assert not status.enabled  # power back does not re-enable by itself
    await spindle.enable()
    assert (await spindle.read()).enabled


async def test_stuck_and_drift_affect_reported_position(rig: Rig) -> None:
    carriage = await home_carriage(rig)
    await carriage.move_absolute(600.0, 3000.0)
    rig.run(2.0, 0.5)
    rig.faults.inject("carriage", "stuck")
    frozen = (await carriage.read()).position_mm
    rig.run(2.0, 0.5)
    status = await carriage.read()
    assert status.position_mm == frozen
    assert rig.plant.carriage_mm > frozen  # the axis itself moved on
    assert status.following_error_mm < 0
    rig.faults.clear("carriage", "stuck")
    run_until(rig, "carriage", at_rest, 1.0, 60)
    rig.faults.inject("carriage", "drift", params={"offset": 0.25})
    assert (await carriage.read()).position_mm == 600.25
    rig.faults.inject("carriage", "drift", params={"rate_per_s": 0.1})
    rig.run(2.0, 0.5)
    assert (await carriage.read()).position_mm == pytest.approx(600.2, abs=0.002)


# -- link faults ----------------------------------------------------------------------------------
async def test_silent_drive_times_out_others_answer(rig: Rig) -> None:
    rig.faults.inject("carriage", "silent")
    with pytest.raises(DeviceTimeout):
        await rig.axes["carriage"].read()
    assert (await rig.axes["torch_slide"].read()).position_mm == 150.0
    rig.faults.clear("carriage", "silent")
    assert (await rig.axes["carriage"].read()).powered


@pytest.mark.parametrize("kind", ["corrupt", "torn"])
async def test_damaged_reply_is_a_protocol_error(rig: Rig, kind: str) -> None:
    rig.faults.inject("carriage", kind)
    with pytest.raises(DeviceProtocolError) as info:
        await rig.axes["carriage"].read()
    assert not isinstance(info.value, DeviceExceptionResponse)
    rig.faults.clear("carriage", kind)
    status = await eventually(rig.axes["carriage"].read, lambda s: s.powered)
    assert isinstance(status, AxisStatus)


async def test_disconnect_and_reconnect(any_rig: Rig) -> None:
    carriage = any_rig.axes["carriage"]
    assert (await carriage.read()).powered
    any_rig.faults.inject("carriage", "disconnect")
    error = await first_failure(carriage.read)
    assert isinstance(error, (DeviceDisconnected, DeviceTimeout))
    any_rig.faults.clear("carriage", "disconnect")
    status = await eventually(carriage.read, lambda s: s.powered)
    assert status.position_mm == 0.0


# -- kinematics, without the wire -----------------------------------------------------------------
def test_profiles_never_overshoot_nor_exceed_limits() -> None:
    rng = random.Random(7)
    for _ in range(300):
        position, velocity = rng.uniform(0, 1200), rng.uniform(-50, 50)
        target, cruise, accel = rng.uniform(0, 1200), rng.uniform(0.5, 50), rng.uniform(1, 500)
        starting_toward = velocity * (target - position) >= 0
        for _ in range(10_000):
            dt = rng.choice([0.001, 0.01, 0.3, 3.0])
            moved = advance_to_position(
                position, velocity, target=target, cruise=cruise, accel=accel, dt=dt
            )
            assert abs(moved.velocity - velocity) <= accel * dt + 1e-6
            assert abs(moved.velocity) <= max(cruise, abs(velocity)) + 1e-9
            if starting_toward and velocity == 0.0:
                assert min(position, target) - 1e-6 <= moved.position
            position, velocity = moved.position, moved.velocity
            if moved.arrived:
                break
        assert (position, velocity) == (target, 0.0)


def test_velocity_ramp_is_exact_over_long_steps() -> None:
    moved = advance_to_velocity(0.0, 0.0, target=180.0, accel=120.0, dt=3.0)
    # 1.5 s ramp (135 degrees) then 1.5 s at 180 degrees/s (270 degrees).
    assert moved.velocity == 180.0
    assert moved.position == pytest.approx(405.0)


# -- communication watchdog (docs/devices.md, "Servo drives": HR 10-12) --------------------------
async def test_pinned_watchdog_frame(rig: Rig) -> None:
    # Unit 1 (spindle), FC 16 at HR 10, 3 registers: 1000 ms, then +10.00 rpm (0x000003E8).
    request = bytes.fromhex("01 10 00 0a 00 03 06 03e8 0000 03e8 a6 3a")
    assert await _exchange(rig.bus.port, request, 8) == bytes.fromhex("01 10 00 0a 00 03 a0 0a")
    spindle = rig.sims["spindle"]
    assert spindle.comm_watchdog_s == 1.0
    assert spindle.watchdog_velocity == 10.0
    # The driver writes the same block in one request, and reads it back.
    carriage = rig.axes["carriage"]
    before = rig.transport.requests
    await carriage.configure_comm_watchdog(0.25)
    assert rig.transport.requests == before + 1
    assert rig.sims["carriage"].holding[10:13] == [250, 0, 0]
    assert await carriage.read_comm_watchdog() == (0.25, 0.0)
    assert await rig.axes["spindle"].read_comm_watchdog() == (1.0, 10.0)


async def test_watchdog_stops_a_linear_axis_with_an_alarm(rig: Rig) -> None:
    carriage = await home_carriage(rig)
    await carriage.configure_comm_watchdog(1.0)
    await carriage.move_absolute(1200.0, 3000.0)
    for _ in range(30):  # 3 s of wall time, a poll every 0.1 s: fed, no alarm
        await carriage.read()
        rig.tick(0.1)
    status = await carriage.read()
    assert status.moving
    assert not status.alarm
    rig.tick(0.1)
    # The controller falls silent: after 1 s (wall) the drive stops and raises alarm 7.
    for _ in range(11):
        rig.tick(0.1)
    sim = rig.sims["carriage"]
    assert sim.alarm_code == AlarmCode.COMM_WATCHDOG
    assert not sim.enabled
    run_until(rig, "carriage", at_rest, 0.1, 10)
    status = await carriage.read()
    assert status.alarm
    assert status.alarm_code == 7
    assert not status.moving
    assert status.position_mm < 1200.0
    # Requests resume: the alarm stays until reset; then the drive can be enabled.
    rig.tick(0.1)
    assert (await carriage.read()).alarm_code == 7
    await carriage.reset_alarm()
    await carriage.enable()
    status = await carriage.read()
    assert not status.alarm
    assert status.enabled


async def test_watchdog_keeps_the_spindle_turning_at_the_fallback_speed(rig: Rig) -> None:
    spindle = rig.axes["spindle"]
    await spindle.configure_comm_watchdog(0.5, fallback_speed=10.0)
    await spindle.enable()
    await spindle.set_velocity(30.0)
    rig.tick(0.1)
    for _ in range(6):
        rig.tick(0.1)
    sim = rig.sims["spindle"]
    assert sim.alarm_code == AlarmCode.COMM_WATCHDOG
    assert sim.enabled
    rig.run(5.0, 0.5)
    status = await spindle.read()
    assert status.alarm_code == 7
    assert status.alarm
    assert status.enabled
    assert status.velocity == pytest.approx(10.0)  # never to a stop: the rod may be hot
    assert rig.plant.spindle_rpm == pytest.approx(10.0)
    await spindle.reset_alarm()
    status = await spindle.read()
    assert not status.alarm
    assert status.velocity == pytest.approx(10.0)


async def test_watchdog_starts_a_spindle_at_rest_but_enabled(rig: Rig) -> None:
    spindle = rig.axes["spindle"]
    await spindle.configure_comm_watchdog(0.5, fallback_speed=10.0)
    await spindle.enable()
    rig.tick(0.1)
    for _ in range(6):
        rig.tick(0.1)
    rig.run(2.0, 0.5)
    assert rig.plant.spindle_rpm == pytest.approx(10.0)


async def test_a_cut_line_does_not_feed_the_watchdog(rig: Rig) -> None:
    carriage = rig.axes["carriage"]
    await carriage.configure_comm_watchdog(0.5)
    rig.tick(0.1)
    rig.faults.inject("carriage", "silent")
    for _ in range(6):
        with pytest.raises((DeviceTimeout, DeviceDisconnected)):
            await carriage.read()
        rig.tick(0.1)
    assert rig.sims["carriage"].alarm_code == AlarmCode.COMM_WATCHDOG
    # The other drives on the bus have no watchdog armed: nothing happens to them.
    assert rig.sims["torch_slide"].alarm_code == AlarmCode.NONE


async def test_reads_alone_feed_the_watchdog_and_off_never_fires(rig: Rig) -> None:
    slide = rig.axes["torch_slide"]
    await slide.configure_comm_watchdog(0.3)
    for _ in range(50):
        await slide.read()
        rig.tick(0.1)
    assert not (await slide.read()).alarm
    await slide.configure_comm_watchdog(0.0)  # off
    rig.tick(0.1)
    for _ in range(50):
        rig.tick(0.1)
    assert rig.sims["torch_slide"].alarm_code == AlarmCode.NONE


async def test_watchdog_range_checks_send_nothing(rig: Rig) -> None:
    before = rig.transport.requests
    with pytest.raises(DeviceRangeError):
        await rig.axes["carriage"].configure_comm_watchdog(1.0, fallback_speed=10.0)
    with pytest.raises(DeviceRangeError):
        await rig.axes["spindle"].configure_comm_watchdog(1.0, fallback_speed=101.0)
    with pytest.raises(DeviceRangeError):
        await rig.axes["spindle"].configure_comm_watchdog(65.536)
    with pytest.raises(DeviceRangeError):
        await rig.axes["spindle"].configure_comm_watchdog(0.0004)  # would round to "off"
    assert rig.transport.requests == before


async def test_drive_refuses_a_fallback_above_max_speed(rig: Rig) -> None:
    with pytest.raises(DeviceExceptionResponse) as refused:
        await rig.transport.write_registers(
            1, servo_map.HR_COMM_WATCHDOG, servo_map.encode_watchdog_block(1.0, 150.0)
        )
    assert refused.value.exception_code == ILLEGAL_VALUE
    assert rig.sims["spindle"].comm_watchdog_s == 0.0


# -- urgent writes on the drive bus ----------------------------------------------------------------
async def _queue_polls(rig: Rig, axis: str, count: int) -> list[asyncio.Task[AxisStatus]]:
    await rig.transport.connect()
    rig.bus.requests_seen.clear()
    tasks = [asyncio.create_task(rig.axes[axis].read()) for _ in range(count)]
    for _ in range(20):  # no sleeping: the simulator answers within a millisecond
        await asyncio.sleep(0)
        if rig.transport.queued == count - 1:
            return tasks
    raise AssertionError("the polls did not queue")


READ_STATUS = (2, 4, servo_map.IR_STATUS)  # (unit, function, address) of a carriage poll


async def test_urgent_stop_goes_ahead_of_queued_polls(rig: Rig) -> None:
    carriage = await home_carriage(rig)
    await carriage.move_absolute(1200.0, 3000.0)
    rig.run(1.0, 0.5)
    polls = await _queue_polls(rig, "torch_slide", 6)
    await carriage.stop(urgent=True)
    await asyncio.gather(*polls)
    seen = list(rig.bus.requests_seen)
    slide_poll = (3, 4, servo_map.IR_STATUS)
    assert seen == [slide_poll, (2, 6, servo_map.HR_CONTROL), *[slide_poll] * 5]


async def test_urgent_move_sends_both_writes_before_the_queued_polls(rig: Rig) -> None:
    carriage = await home_carriage(rig)
    polls = await _queue_polls(rig, "torch_slide", 5)
    await carriage.move_absolute(0.0, 3000.0, urgent=True)
    await asyncio.gather(*polls)
    slide_poll = (3, 4, servo_map.IR_STATUS)
    assert list(rig.bus.requests_seen) == [
        slide_poll,
        (2, 16, servo_map.HR_MODE),  # setpoints, then the start: nothing slips in between
        (2, 6, servo_map.HR_CONTROL),
        *[slide_poll] * 4,
    ]


async def test_urgent_set_velocity_and_ordinary_writes_wait(rig: Rig) -> None:
    spindle = rig.axes["spindle"]
    await spindle.enable()
    polls = await _queue_polls(rig, "carriage", 4)
    ordinary = asyncio.create_task(spindle.set_velocity(10.0))
    await asyncio.sleep(0)  # queued behind the polls
    await spindle.set_velocity(12.0, urgent=True)
    await asyncio.gather(*polls, ordinary)
    seen = list(rig.bus.requests_seen)
    assert seen[:3] == [READ_STATUS, (1, 16, servo_map.HR_MODE), (1, 6, servo_map.HR_CONTROL)]
    assert seen[3:6] == [READ_STATUS] * 3
    assert seen[6:] == [(1, 16, servo_map.HR_MODE), (1, 6, servo_map.HR_CONTROL)]


# -- drive-side oscillation (docs/devices.md, "Servo drives": HR 13-21) ---------------------------
def oscillating(sim: ServoAxisSim) -> bool:
    return sim.oscillating


async def test_pinned_oscillation_frames(rig: Rig) -> None:
    await home_carriage(rig)
    # Unit 2, FC 16 at HR 13, 9 registers: 300 mm, 900 mm, 1500 mm/min, 0 (max), 2 strokes.
    block = bytes.fromhex("02 10 00 0d 00 09 12 000493e0 000dbba0 000249f0 00000000 0002 f9 f4")
    assert await _exchange(rig.bus.port, block, 8) == bytes.fromhex("02 10 00 0d 00 09 91 ff")
    # FC 6, HR 0 = ENABLE | OSCILLATE (0x81): echoed, and the drive oscillates.
    trigger = bytes.fromhex("02 06 00 00 00 81 49 99")
    assert await _exchange(rig.bus.port, trigger, 8) == trigger
    assert rig.sims["carriage"].oscillating
    # The status read is now 10 registers: oscillating (bit 8) and the stroke counter (IR 9).
    reply = await _exchange(rig.bus.port, bytes.fromhex("02 04 00 00 00 0a 70 3e"), 25)
    assert reply[3:5] == bytes.fromhex("0189")  # oscillating, powered, homed, enabled
    assert reply[19:23] == bytes.fromhex("0006 0000")  # mode 6, no stroke yet


async def test_oscillation_counts_strokes_and_stops_after_n(rig: Rig) -> None:
    carriage = await home_carriage(rig)
    before = rig.transport.requests
    await carriage.oscillate(300.0, 900.0, 3000.0, strokes=3)
    assert rig.transport.requests == before + 2  # the block, then the trigger
    status = await carriage.read()
    assert status.oscillating
    assert status.mode is AxisMode.OSCILLATE
    assert status.strokes_done == 0
    assert not status.in_position
    # The approach (0 -> 300 mm) is not a stroke; then 300 -> 900 -> 300 -> 900.
    sim = rig.sims["carriage"]
    counted: list[tuple[int, float]] = []  # (strokes done, position) at every 0.05 s
    while sim.oscillating:
        rig.step(0.05)
        counted.append((sim.strokes_done, sim.position))
    assert len(counted) * 0.05 == pytest.approx(6 + 3 * 12, abs=0.5)  # 300 mm, then 3 x 600
    assert [n for n, _ in counted] == sorted(n for n, _ in counted)
    assert {n for n, _ in counted} == {0, 1, 2, 3}
    # Never past a turning point once there; stroke 2 runs 900 -> 300.
    assert all(300.0 <= p <= 900.0 for n, p in counted if n > 0)
    stroke_2 = [p for n, p in counted if n == 1]
    assert stroke_2 == sorted(stroke_2, reverse=True)
    status = await carriage.read()
    assert not status.oscillating
    assert status.strokes_done == 3
    assert status.in_position
    assert not status.moving
    assert status.position_mm == 900.0
    rig.run(10.0, 1.0)
    assert rig.sims["carriage"].position == 900.0  # it stays stopped


async def test_oscillation_speed_change_applies_at_the_next_reversal(rig: Rig) -> None:
    carriage = await home_carriage(rig)
    await carriage.oscillate(300.0, 900.0, 600.0)  # 0 strokes: until stopped
    sim = rig.sims["carriage"]
    rig.run(40.0, 0.5)  # the approach (300 mm at 10 mm/s), then 10 s into stroke 1
    assert sim.position == pytest.approx(400.0, abs=0.5)  # less the ramps at 500 mm/s^2
    await carriage.set_oscillation_speed(1800.0)
    rig.run(20.0, 0.5)
    assert sim.velocity == pytest.approx(600.0 / 60)  # this pass keeps its speed
    assert sim.strokes_done == 0
    run_until(rig, "carriage", lambda s: s.strokes_done == 1, 0.5, 120)
    rig.run(1.0, 0.5)
    assert sim.velocity == pytest.approx(-1800.0 / 60)  # the next pass runs at the new speed
    status = await carriage.read()
    assert status.oscillating
    assert status.velocity == pytest.approx(-1800.0)
    # A zero speed for the next pass is refused: by the driver, and by the drive.
    with pytest.raises(DeviceRangeError):
        await carriage.set_oscillation_speed(0.0)
    with pytest.raises(DeviceExceptionResponse):
        await rig.transport.write_registers(2, servo_map.HR_OSC_SPEED, [0, 0])


async def test_large_steps_oscillate_as_small_ones(rig: Rig) -> None:
    """The time left after a reversal runs on into the next stroke: at 3 s steps the carriage
    is where 0.01 s steps put it (a high time scale integrates like a low one)."""
    carriage = await home_carriage(rig)
    sim = rig.sims["carriage"]
    ends = []
    for dt_s in (3.0, 0.01):
        await carriage.move_absolute(0.0, 3000.0)  # both runs start at rest at 0 mm
        run_until(rig, "carriage", at_rest, 0.5, 60)
        await carriage.oscillate(300.0, 900.0, 3000.0)
        rig.run(120.0, dt_s)
        ends.append((sim.position, sim.strokes_done))
    (coarse_mm, coarse_strokes), (fine_mm, fine_strokes) = ends
    assert coarse_strokes == fine_strokes > 5
    assert coarse_mm == pytest.approx(fine_mm, abs=1e-3)


async def _stop_with_command(rig: Rig, axis: ServoAxis) -> None:
    await axis.stop()


async def _stop_with_disable(rig: Rig, axis: ServoAxis) -> None:
    await axis.disable()


async def _stop_with_watchdog(rig: Rig, axis: ServoAxis) -> None:
    for _ in range(12):  # the controller falls silent for 1.2 s of wall time
        rig.tick(0.1)


async def _stop_with_limit_switch(rig: Rig, axis: ServoAxis) -> None:
    rig.faults.inject("carriage", "limit_switch", params={"side": "positive"})


async def _stop_with_drive_alarm(rig: Rig, axis: ServoAxis) -> None:
    rig.faults.inject("carriage", "drive_alarm", params={"code": 5})


async def _stop_with_estop(rig: Rig, axis: ServoAxis) -> None:
    rig.plant.drives_powered = False


@pytest.mark.parametrize(
    "stop",
    [
        _stop_with_command,
        _stop_with_disable,
        _stop_with_watchdog,
        _stop_with_limit_switch,
        _stop_with_drive_alarm,
        _stop_with_estop,
    ],
)
async def test_every_stop_path_ends_the_oscillation_at_once(
    rig: Rig, stop: Callable[[Rig, ServoAxis], Awaitable[None]]
) -> None:
    carriage = await home_carriage(rig)
    await carriage.configure_comm_watchdog(1.0)
    await carriage.oscillate(300.0, 900.0, 3000.0)
    rig.tick(0.1)
    run_until(rig, "carriage", lambda s: s.strokes_done == 1, 0.5, 120)
    rig.run(3.0, 0.5)  # mid-stroke, heading for 300 mm at 50 mm/s
    await stop(rig, carriage)
    rig.step(0.001)  # the next drive cycle: stop paths act on it, whatever their source
    sim = rig.sims["carriage"]
    assert not sim.oscillating
    # It brakes to rest (50 mm/s at <= 500 mm/s^2: within 2.5 mm) and does not reverse.
    braking_from = sim.position
    seen = run_until(rig, "carriage", at_rest, 0.01, 5)
    assert all(b <= a for a, b in itertools.pairwise(seen))
    assert braking_from - sim.position <= 2.5 + 1e-6
    assert 300.0 < sim.position < 900.0
    rig.run(30.0, 1.0)
    assert rig.sims["carriage"].position == seen[-1]  # nothing restarts it
    assert sim.strokes_done == 1
    rig.faults.clear()
    rig.plant.drives_powered = True


async def test_limit_switch_flags_its_side(rig: Rig) -> None:
    carriage = await home_carriage(rig)
    await carriage.oscillate(300.0, 900.0, 3000.0)
    rig.run(2.0, 0.5)
    rig.faults.inject("carriage", "limit_switch", params={"side": "positive"})
    rig.run(1.0, 0.1)
    status = await carriage.read()
    assert status.limit_positive
    assert not status.oscillating
    assert not status.moving
    assert status.enabled


async def test_turning_points_outside_travel_are_refused(rig: Rig) -> None:
    carriage = rig.axes["carriage"]
    await carriage.enable()
    # The driver checks first: nothing is sent.
    before = rig.transport.requests
    for call in (
        carriage.oscillate(-1.0, 900.0, 150.0),
        carriage.oscillate(300.0, 1200.5, 150.0),
        carriage.oscillate(300.0, 300.0, 150.0),
        carriage.oscillate(300.0, 900.0, 0.0),
        carriage.oscillate(300.0, 900.0, 3001.0),
        carriage.oscillate(300.0, 900.0, 150.0, strokes=-1),
        carriage.oscillate(300.0, 900.0, 150.0, strokes=70_000),
        carriage.oscillate(300.0, 900.0, 150.0, acceleration=501.0),
        rig.axes["spindle"].oscillate(0.0, 10.0, 10.0),
    ):
        with pytest.raises(DeviceRangeError):
            await call
    assert rig.transport.requests == before
    # Not homed: the drive refuses to oscillate (absolute turning points need a reference).
    with pytest.raises(DeviceExceptionResponse) as refused:
        await carriage.oscillate(300.0, 900.0, 150.0)
    assert refused.value.exception_code == ILLEGAL_VALUE
    await home_carriage(rig)
    # The drive refuses turning points outside its travel, whoever wrote them.
    for first, second in ((300.0, 1300.0), (-5.0, 900.0), (500.0, 500.0)):
        await rig.transport.write_registers(
            2,
            servo_map.HR_OSC_FIRST,
            servo_map.encode_oscillation_block(
                servo_map.Oscillation(first, second, 150.0, 0.0, 2)
            ),
        )
        with pytest.raises(DeviceExceptionResponse) as refused:
            await rig.transport.write_register(2, servo_map.HR_CONTROL, 0x81)
        assert refused.value.exception_code == ILLEGAL_VALUE
        assert not rig.sims["carriage"].oscillating
    # A speed beyond the axis maximum is refused at the register.
    with pytest.raises(DeviceExceptionResponse):
        await rig.transport.write_registers(2, servo_map.HR_OSC_SPEED, [0x0004, 0x93E1])
    # A rotary axis has no turning points.
    spindle = rig.axes["spindle"]
    await spindle.enable()
    with pytest.raises(DeviceExceptionResponse):
        await rig.transport.write_register(1, servo_map.HR_CONTROL, 0x81)


async def test_a_new_motion_or_oscillation_replaces_the_running_one(rig: Rig) -> None:
    carriage = await home_carriage(rig)
    await carriage.oscillate(300.0, 900.0, 3000.0)
    run_until(rig, "carriage", lambda s: s.strokes_done == 2, 0.5, 120)
    await carriage.move_absolute(600.0, 3000.0)
    status = await carriage.read()
    assert not status.oscillating
    assert status.mode is AxisMode.POSITION_ABSOLUTE
    assert status.strokes_done == 2  # the last oscillation's count stays readable
    run_until(rig, "carriage", at_rest, 0.5, 60)
    assert rig.sims["carriage"].position == 600.0
    await carriage.oscillate(700.0, 400.0, 3000.0, strokes=1)
    assert (await carriage.read()).strokes_done == 0
    seen = run_until(rig, "carriage", lambda s: not s.oscillating, 0.5, 120)
    assert 690.0 < max(seen) <= 700.0  # up to turning point 1 first, then one stroke
    assert rig.sims["carriage"].position == 400.0


async def test_writing_the_stroke_count_ends_at_the_next_turning_point(rig: Rig) -> None:
    carriage = await home_carriage(rig)
    await carriage.oscillate(300.0, 900.0, 3000.0)
    run_until(rig, "carriage", lambda s: s.strokes_done == 2, 0.5, 120)
    rig.run(3.0, 0.5)
    await carriage.set_oscillation_strokes(1)  # at or below the strokes done: this pass ends it
    seen = run_until(rig, "carriage", lambda s: not s.oscillating, 0.5, 60)
    assert max(seen) == 900.0
    status = await carriage.read()
    assert status.strokes_done == 3
    assert status.position_mm == 900.0
    assert status.in_position
