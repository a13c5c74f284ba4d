"""Maintenance with typed fakes behind the real writer (rule 6): leases end what a lost client
started, belong to the session that took them, and a stop that fails is retried; a device test
is under way (the envelope lifts its device) before its first write; the envelope's refusals
come back as maintenance refusals, with the envelope's reason.

Lease time is a clock the test moves (the module's wall clock, replaced): no test here
depends on how fast the machine runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from controller.config.line import cooling_speed_rpm
from controller.machine.devices import Machine
from controller.machine.telemetry import Telemetry
from controller.run import maintenance as maintenance_module
from controller.run.maintenance import Maintenance, MaintenanceRefused
from controller.safety.envelope import Envelope, EnvelopeInputs, compute
from controller.safety.states import Mode, StateMachine
from controller.safety.writer import Actuators
from tests.fakes import Call, RecordingMachine, default_line, healthy_inputs, recording_machine
from tests.waiting import eventually

LINE = default_line()
LEASE_S = 0.5
WATCHDOG_TICKS = 5


class FakeWallClock:
    """Stands for the ``time`` module inside maintenance: only the test moves it."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t


class Line:
    """What maintenance needs of the supervisor (``MaintainedLine``), over typed fakes: the
    envelope follows the safety inputs, the conditions the test sets and the device tests
    under way, as the supervisor's does."""

    def __init__(self) -> None:
        self.line = LINE
        self.recording: RecordingMachine = recording_machine(LINE)
        self.machine: Machine = self.recording
        self.sm = StateMachine(mode=Mode.MAINTENANCE)
        self.telemetry = Telemetry(safety=healthy_inputs())
        self.conditions: set[str] = set()
        self.act = Actuators(self.machine, self.envelope)
        self.maintenance = Maintenance(self, lease_s=LEASE_S)
        self.idled: list[str] = []

    def envelope(self) -> Envelope:
        io = self.telemetry.safety
        assert io is not None
        return compute(EnvelopeInputs(
            state=self.sm.state, mode=self.sm.mode, conditions=frozenset(self.conditions),
            doors_closed=io.doors_closed, rod_temperature_c=io.rod_temperature_c,
            devices_under_test=frozenset(self.maintenance.test_leases)), LINE)

    def link_alive(self, device: str) -> bool:
        return True

    async def make_idle(self, source: str = "idle") -> None:
        self.idled.append(source)

    def calls(self, name: str) -> list[Call]:
        return self.recording.calls(name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeWallClock:
    fake = FakeWallClock()
    monkeypatch.setattr(maintenance_module, "time", fake)
    return fake


@contextlib.asynccontextmanager
async def watchdog(m: Maintenance) -> AsyncIterator[None]:
    task = asyncio.create_task(m.watchdog(), name="test-watchdog")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def ticks(n: int = WATCHDOG_TICKS) -> None:
    """Let the watchdog run a few times (whatever it is to do, it has done by then)."""
    for _ in range(n):
        await asyncio.sleep(maintenance_module.WATCHDOG_S)


def called(line: Line, name: str, count: int = 1) -> Callable[[], Awaitable[bool]]:
    """For ``eventually``: ``name`` has been called ``count`` times or more."""
    async def check() -> bool:
        return len(line.calls(name)) >= count
    return check


# -- leases ---------------------------------------------------------------------------------
async def test_a_jog_stops_by_itself_when_its_lease_lapses(clock: FakeWallClock) -> None:
    line = Line()
    m = line.maintenance
    assert await m.jog("carriage", 1, None, "ann") == "started"
    assert [c.name for c in line.recording.writes()] == ["carriage.enable", "carriage.jog"]
    async with watchdog(m):
        await ticks()
        assert line.calls("carriage.stop") == []  # the lease still runs
        clock.t += LEASE_S + 0.01
        await eventually(called(line, "carriage.stop"), what="the carriage's stop")
    (stop,) = line.calls("carriage.stop")
    assert stop.kwargs == {"urgent": True}
    assert m.leases == {} and m.lease_expiries == 1


async def test_a_renewed_lease_keeps_the_jog_going(clock: FakeWallClock) -> None:
    line = Line()
    m = line.maintenance
    await m.jog("carriage", 1, None, "ann")
    async with watchdog(m):
        for _ in range(3):
            clock.t += LEASE_S * 0.8
            assert await m.jog("carriage", 1, None, "ann") == "renewed"
            await ticks()
    assert line.calls("carriage.stop") == []
    assert len(line.calls("carriage.jog")) == 1  # a renewal writes nothing


async def test_one_sessions_lease_does_not_keep_another_sessions_axis_moving(
        clock: FakeWallClock) -> None:
    line = Line()
    m = line.maintenance
    await m.jog("carriage", 1, None, "ann", session="ann-hmi")
    await m.jog("torch_slide", -1, None, "bob", session="bob-cli")
    async with watchdog(m):
        clock.t += LEASE_S * 0.8
        assert await m.jog("torch_slide", -1, None, "bob", session="bob-cli") == "renewed"
        with pytest.raises(MaintenanceRefused, match="another session"):
            await m.jog("carriage", 1, None, "bob", session="bob-cli")
        clock.t += LEASE_S * 0.4  # ann's lease has lapsed, bob's has not
        await eventually(called(line, "carriage.stop"), what="the carriage's stop")
        await ticks()
    assert line.calls("torch_slide.stop") == []
    assert set(m.leases) == {"torch_slide"}


async def test_a_stop_that_fails_is_retried_until_it_goes_through(
        clock: FakeWallClock) -> None:
    line = Line()
    m = line.maintenance
    await m.jog("carriage", 1, None, "ann")
    carriage = line.recording.axes["carriage"]
    carriage.fail = OSError("link lost")
    async with watchdog(m):
        clock.t += LEASE_S + 0.01
        await eventually(called(line, "carriage.stop", 3), what="the stop to be retried")
        assert m.pending_stops == {"carriage"}
        carriage.fail = None

        async def through() -> bool:
            return not m.pending_stops

        await eventually(through, what="the stop to go through")
        tried = len(line.calls("carriage.stop"))
        await ticks()
    assert len(line.calls("carriage.stop")) == tried  # no more stops once one went through


async def test_an_operators_stop_that_fails_is_left_to_the_watchdog(
        clock: FakeWallClock) -> None:
    line = Line()
    m = line.maintenance
    await m.jog("carriage", 1, None, "ann")
    line.recording.axes["carriage"].fail = OSError("link lost")
    with pytest.raises(OSError, match="link lost"):
        await m.jog_stop("carriage", "ann")
    assert m.pending_stops == {"carriage"} and m.leases == {}
    line.recording.axes["carriage"].fail = None
    async with watchdog(m):
        await eventually(called(line, "carriage.stop", 2), what="the watchdog's stop")
        await ticks()
    assert m.pending_stops == set()


async def test_a_lapsed_spindle_jog_leaves_a_hot_rod_turning(clock: FakeWallClock) -> None:
    line = Line()
    line.telemetry.safety = healthy_inputs(rod_temperature_c=900.0)
    m = line.maintenance
    await m.jog("spindle", 1, None, "ann")
    async with watchdog(m):
        clock.t += LEASE_S + 0.01
        await eventually(called(line, "spindle.set_velocity"), what="the cooling speed")
    assert line.calls("spindle.stop") == []
    assert line.calls("spindle.set_velocity")[0].args == (cooling_speed_rpm(LINE),)


# -- device tests ---------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "device", "writes"), [
    ({"device": "mfc_sicl4", "flow_slpm": 2.0}, "mfc_sicl4",
     ["safety_io.write_outputs", "mfc_sicl4.set_flow_slpm"]),
    ({"device": "mfc_o2", "flow_slpm": 50.0}, "mfc_o2",
     ["safety_io.write_outputs", "mfc_o2.set_flow_slpm"]),
    ({"device": "rf", "power_kw": 1.0}, "rf",
     ["rf.set_power_kw", "safety_io.write_outputs", "rf.rf_on"]),
])
async def test_a_device_test_is_under_way_before_its_first_write(
        clock: FakeWallClock, args: dict[str, object], device: str, writes: list[str]) -> None:
    line = Line()
    m = line.maintenance
    leased_at_write: list[bool] = []
    line.recording.on_call(lambda call: leased_at_write.append(device in m.test_leases))
    answer = await m.device_test(dict(args), "ann")
    assert answer["device"] == device
    assert [c.name for c in line.recording.writes()] == writes
    assert leased_at_write == [True] * len(writes)


async def test_a_device_test_ends_when_its_lease_lapses(clock: FakeWallClock) -> None:
    line = Line()
    m = line.maintenance
    await m.device_test({"device": "mfc_o2", "flow_slpm": 50.0}, "ann")
    async with watchdog(m):
        clock.t += m.test_lease_s + 0.01

        async def flow_ended() -> bool:
            return line.calls("mfc_o2.set_flow_slpm")[-1].args == (0.0,)

        await eventually(flow_ended, what="the test's flow to end")
    assert m.test_leases == {}


# -- refusals -------------------------------------------------------------------------------
async def test_a_device_test_the_envelope_forbids_is_refused_with_its_reason(
        clock: FakeWallClock) -> None:
    line = Line()
    line.conditions.add("exhaust_lost")  # purging would push the gas into the room
    m = line.maintenance
    with pytest.raises(MaintenanceRefused, match="exhaust_lost") as refused:
        await m.device_test({"device": "mfc_o2", "flow_slpm": 50.0}, "ann")
    assert refused.value.action == "device_test"
    assert line.recording.writes() == []
    assert m.test_leases == {}  # the refused test is not under way


async def test_a_jog_the_envelope_forbids_is_refused_and_leaves_no_lease(
        clock: FakeWallClock) -> None:
    line = Line()
    line.conditions.add("estop")  # no axis may move
    m = line.maintenance
    with pytest.raises(MaintenanceRefused, match="estop") as refused:
        await m.jog("carriage", 1, None, "ann")
    assert refused.value.action == "jog"
    assert line.calls("carriage.jog") == []
    assert m.leases == {}
