"""Maintenance mode over a whole simulated line (domain.md rule 6): jogs live on a lease,
setup speed with a door open, every action refused with the E-stop chain or the safety relay
open, soft limits, homing, device tests, and every device back to idle on leaving.

Axis speeds are mm/min of *process* time; the simulated plant moves `TIME_SCALE` times faster
in wall time while leases stay in wall time, so the scale is kept low enough for the carriage
not to reach its travel end during a test."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from controller.config.line import load_line_config
from controller.safety.states import Mode
from controller.service.line_service import LineService
from controller.service.protocol import CommandReply
from controller.service.users import UserStore
from tests.system.rig import RECIPES, Rig, line_rig

pytestmark = pytest.mark.slow

TIME_SCALE = 10.0
TEST_POWER_MAX_KW = load_line_config().supervision.device_test_max_power_kw
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
FITTER = "max"  # the maintenance user
RENEW_S = 0.1


class Bench:
    """The rig, its service, and the maintenance user's commands."""

    def __init__(self, rig: Rig, service: LineService) -> None:
        self.rig = rig
        self.service = service
        self.plant = rig.sim.plant

    async def do(self, command: str, **args: object) -> CommandReply:
        return await self.service.execute(FITTER, command, dict(args))

    async def ok(self, command: str, **args: object) -> CommandReply:
        reply = await self.do(command, **args)
        assert reply.accepted, f"{command} {args}: {reply.reason}"
        return reply

    async def refused(self, command: str, **args: object) -> str:
        reply = await self.do(command, **args)
        assert not reply.accepted, f"{command} {args} was accepted"
        assert reply.reason is not None
        return reply.reason

    async def carriage_still(self, within_s: float) -> None:
        """Until the plant's carriage has stopped moving (two samples 0.2 s apart agree)."""
        last = self.plant.carriage_mm
        deadline = time.monotonic() + within_s
        while True:
            await asyncio.sleep(0.2)
            now = self.plant.carriage_mm
            if abs(now - last) < 0.05:
                return
            assert time.monotonic() < deadline, f"carriage still moving at {now:.1f} mm"
            last = now

    async def move_until_arrived(self, axis: str, position_mm: float, speed: float) -> None:
        """A move, its lease renewed every RENEW_S until the axis has arrived."""
        args = {"axis": axis, "position_mm": position_mm, "speed": speed}
        deadline = time.monotonic() + 30
        while (await self.ok("move", **args)).data["lease"] != "arrived":
            assert time.monotonic() < deadline, f"{axis} never arrived at {position_mm}"
            await asyncio.sleep(RENEW_S)

    async def renew(self, seconds: float, speed: float) -> list[float]:
        """Renew a + jog of the carriage every RENEW_S for `seconds`; the positions seen."""
        positions = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            reply = await self.ok("jog", axis="carriage", direction="+", speed=speed)
            assert reply.data["lease"] in ("started", "renewed")
            positions.append(self.plant.carriage_mm)
            await asyncio.sleep(RENEW_S)
        return positions


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    users = UserStore(tmp_path / "users.json", hasher=FAST)
    users.add(FITTER, "fitter-password", "maintenance")
    users.add("olga", "olga-password", "operator")
    async with line_rig(tmp_path, time_scale=TIME_SCALE) as rig:
        yield Bench(rig, LineService(rig.sup, users, rig.db))


async def enter(bench: Bench) -> None:
    await bench.ok("mode", mode="maintenance")
    assert bench.rig.sup.sm.mode is Mode.MAINTENANCE


async def test_a_jog_lives_on_its_lease(bench: Bench) -> None:
    await enter(bench)
    watchdog = bench.rig.sup.maintenance
    expiries = watchdog.lease_expiries
    speed = 300.0  # mm/min: 50 mm/s of wall time at TIME_SCALE
    positions = await bench.renew(1.2, speed)
    # Renewed every 0.1 s, the jog runs on well past one lease (0.5 s): still moving.
    assert watchdog.lease_expiries == expiries
    late = positions[len(positions) // 2:]
    assert all(b > a for a, b in itertools.pairwise(late)), late
    assert positions[-1] - positions[0] > 20
    # Renewals stop: the watchdog ends the jog once the lease has run out.
    last_renewal = bench.plant.carriage_mm
    await bench.carriage_still(within_s=3 * watchdog.lease_s + 1)
    assert watchdog.lease_expiries == expiries + 1
    # At most one lease of travel (plus deceleration and a poll) after the last renewal.
    wall_speed = speed / 60 * TIME_SCALE
    assert bench.plant.carriage_mm - last_renewal < wall_speed * (watchdog.lease_s + 0.5)
    # Only the start of the jog is a recorded command, not every renewal.
    commands = [e.payload["command"] for e in bench.service.events_since(0)
                if e.kind == "command"]
    assert commands.count("jog") == 1


async def test_a_jog_stop_ends_it_at_once(bench: Bench) -> None:
    await enter(bench)
    await bench.ok("jog", axis="carriage", direction="+", speed=300)
    await bench.rig.wait_for(lambda: bench.plant.carriage_mm > 5, 5, "carriage moving")
    await bench.ok("jog_stop", axis="carriage")
    await bench.carriage_still(within_s=1.5)
    assert "carriage" not in bench.rig.sup.maintenance.leases


async def test_setup_speed_with_a_door_open(bench: Bench) -> None:
    await enter(bench)
    carriage = bench.rig.line.axis("carriage")
    setup = carriage.max_speed * carriage.setup_speed_fraction
    bench.rig.sim.faults.inject("safety_io", "door_open")
    await bench.rig.wait_for(bench.rig.sup.maintenance.door_open, 5, "door seen open")
    reason = await bench.refused("jog", axis="carriage", direction="+", speed=setup + 100)
    assert reason == f"{setup + 100:g} exceeds {setup:g} (setup speed: a door is open)"
    await bench.ok("jog", axis="carriage", direction="+", speed=setup / 2)
    await bench.ok("jog_stop", axis="carriage")
    bench.rig.sim.faults.clear()
    await bench.rig.wait_for(lambda: not bench.rig.sup.maintenance.door_open(), 5, "door shut")

    # A fast jog (allowed with the doors shut) is stopped as soon as a door opens.
    fast = setup * 2
    await bench.ok("jog", axis="carriage", direction="+", speed=fast)
    await bench.rig.wait_for(lambda: bench.plant.carriage_mm > 5, 5, "carriage moving")
    expiries = bench.rig.sup.maintenance.lease_expiries
    bench.rig.sim.faults.inject("safety_io", "door_open")
    # Keep renewing, as a client would: the door, not the lease, must stop it.
    for _ in range(3):
        await bench.do("jog", axis="carriage", direction="+", speed=fast)
        await asyncio.sleep(RENEW_S)
    await bench.carriage_still(within_s=1.5)
    assert bench.rig.sup.maintenance.lease_expiries == expiries + 1
    refusal = await bench.refused("jog", axis="carriage", direction="+", speed=fast)
    assert "setup speed: a door is open" in refusal


@pytest.mark.parametrize(("fault", "why"), [("estop", "the E-stop chain is open"),
                                            ("safety_relay_open", "the safety relay is open")])
async def test_every_action_refused_with_the_safety_chain_open(
        bench: Bench, fault: str, why: str) -> None:
    await enter(bench)
    bench.rig.sim.faults.inject("safety_io", fault)
    await bench.rig.wait_for(lambda: bench.rig.sup.maintenance.refusal("jog") is not None, 5,
                             "the safety chain seen open")
    actions: list[tuple[str, dict[str, object]]] = [
        ("jog", {"axis": "carriage", "direction": "+", "speed": 100}),
        ("home", {"axis": "carriage"}),
        ("move", {"axis": "carriage", "position_mm": 100}),
        ("device_test", {"device": "mfc_ar", "flow_slpm": 10}),
        ("device_test", {"device": "rf", "power_kw": 5}),
        ("device_test", {"device": "rf", "read": True}),
    ]
    for command, args in actions:
        assert await bench.refused(command, **args) == why
    recorded = [e.payload for e in bench.service.events_since(0) if e.kind == "command"
                and not e.payload["accepted"]]
    assert len(recorded) == len(actions)
    assert all(e["reason"].endswith(why) for e in recorded)
    # Stopping a jog is always allowed: it only makes things safer.
    await bench.ok("jog_stop", axis="carriage")


async def test_soft_limits_move_and_home(bench: Bench) -> None:
    await enter(bench)
    reason = await bench.refused("move", axis="carriage", position_mm=1300)
    assert reason == "1300 mm is outside carriage's soft limits [0, 1200] mm"
    reason = await bench.refused("move", axis="carriage", position_mm=-1)
    assert "outside carriage's soft limits" in reason
    assert "rotary" in await bench.refused("move", axis="spindle", position_mm=10)
    assert "unknown axis" in await bench.refused("move", axis="tailstock", position_mm=10)
    # The drive takes no absolute move before homing: refused with the reason, not an error.
    assert await bench.refused("move", axis="carriage", position_mm=80) == \
        "carriage is not homed: home it first"
    await bench.ok("jog", axis="carriage", direction="+", speed=600)
    await bench.rig.wait_for(lambda: bench.plant.carriage_mm > 20, 5, "carriage away from 0")
    await bench.ok("jog_stop", axis="carriage")
    await bench.carriage_still(within_s=2)
    await bench.ok("home", axis="carriage")
    await bench.rig.wait_for(lambda: abs(bench.plant.carriage_mm) < 0.5, 15, "back at 0")
    await bench.rig.wait_for(lambda: bench.rig.sup.telemetry.axes["carriage"].homed, 5,
                             "homed flag")
    await bench.move_until_arrived("carriage", 80, 600)
    assert abs(bench.plant.carriage_mm - 80) < 0.5


async def homed(bench: Bench) -> None:
    await bench.ok("home", axis="carriage")
    await bench.rig.wait_for(lambda: bench.rig.sup.telemetry.axes["carriage"].homed
                             and not bench.rig.sup.telemetry.axes["carriage"].moving, 15,
                             "carriage homed")


async def test_a_move_lives_on_its_lease_owned_by_its_session(bench: Bench) -> None:
    await enter(bench)
    await homed(bench)
    reply = await bench.service.execute(FITTER, "move", {"axis": "carriage",
                                                         "position_mm": 1000, "speed": 300},
                                        session="http:bench-a")
    assert reply.accepted and reply.data["lease"] == "started"
    # Another session (the same user at another screen) may not renew it.
    other = await bench.service.execute(FITTER, "move", {"axis": "carriage",
                                                         "position_mm": 1000, "speed": 300},
                                        session="http:bench-b")
    assert not other.accepted and "another session" in (other.reason or "")
    # Nobody renews: the move stops by itself once its lease runs out, far from 1000 mm.
    await bench.carriage_still(within_s=3 * bench.rig.sup.maintenance.lease_s + 1)
    assert bench.plant.carriage_mm < 900
    assert "carriage" not in bench.rig.sup.maintenance.leases


async def test_a_door_opened_mid_move_brings_the_axis_to_a_stop(bench: Bench) -> None:
    await enter(bench)
    await homed(bench)
    renewing = asyncio.create_task(bench.move_until_arrived("carriage", 1100, 900))
    await bench.rig.wait_for(lambda: bench.plant.carriage_mm > 20, 5, "moving")
    bench.rig.sim.faults.inject("safety_io", "door_open")
    await bench.carriage_still(within_s=1.5)
    renewing.cancel()
    with contextlib.suppress(asyncio.CancelledError, AssertionError):
        await renewing
    assert bench.plant.carriage_mm < 1000


async def test_device_tests_and_leaving_maintenance(bench: Bench) -> None:
    await enter(bench)
    plant = bench.plant
    await bench.ok("device_test", device="mfc_ar", flow_slpm=30)
    await bench.rig.wait_for(lambda: abs(plant.gas_flow_slpm["mfc_ar"] - 30) < 1, 10,
                             "argon at 30 slpm")
    reading = await bench.ok("device_test", device="mfc_ar", read=True)
    assert reading.data["status"]["mass_slpm"] == pytest.approx(30, abs=1)

    over = TEST_POWER_MAX_KW + 5
    reason = await bench.refused("device_test", device="rf", power_kw=over)
    assert reason == f"test power {over:g} kW outside [0, {TEST_POWER_MAX_KW:g}]"
    await bench.ok("device_test", device="rf", power_kw=12)
    await bench.rig.wait_for(lambda: plant.plasma_lit, 10, "plasma lit at test power")

    # A jog running as maintenance ends.
    await bench.ok("jog", axis="carriage", direction="+", speed=120)
    await bench.rig.wait_for(lambda: plant.carriage_mm > 2, 5, "carriage moving")
    await bench.ok("mode", mode="production")
    assert bench.rig.sup.sm.mode is Mode.PRODUCTION
    await bench.rig.wait_for(lambda: not plant.rf_on and not plant.plasma_lit, 5, "RF off")
    await bench.rig.wait_for(lambda: all(f < 0.5 for f in plant.gas_flow_slpm.values()), 10,
                             "every flow at zero")
    await bench.carriage_still(within_s=2)
    assert not bench.rig.sup.maintenance.leases
    assert not bench.rig.sup.act.commanded.rf_on
    # Back in production, maintenance actions are refused with the reason.
    reason = await bench.refused("jog", axis="carriage", direction="+", speed=100)
    assert reason == "maintenance actions need maintenance mode: switch modes first"


async def test_no_rf_test_with_a_door_open_and_a_door_trips_a_lit_test(bench: Bench) -> None:
    await enter(bench)
    plant = bench.plant
    bench.rig.sim.faults.inject("safety_io", "door_open")
    await bench.rig.wait_for(bench.rig.sup.maintenance.door_open, 5, "door seen open")
    reason = await bench.refused("device_test", device="rf", power_kw=12)
    assert reason == "the RF stays off while a door is open"
    assert not plant.rf_on
    bench.rig.sim.faults.clear()
    await bench.rig.wait_for(lambda: not bench.rig.sup.maintenance.door_open(), 5, "door shut")

    await bench.ok("device_test", device="mfc_ar", flow_slpm=30)
    await bench.ok("device_test", device="rf", power_kw=12)
    await bench.rig.wait_for(lambda: plant.plasma_lit, 10, "plasma lit at test power")
    bench.rig.sim.faults.inject("safety_io", "door_open")
    # The door interlock holds in maintenance too: the RF goes off by itself.
    await bench.rig.wait_for(lambda: not plant.rf_on, 2, "RF off on the door")
    bench.rig.sim.faults.clear()


async def test_no_maintenance_during_a_run_and_no_run_in_maintenance(tmp_path: Path) -> None:
    users = UserStore(tmp_path / "users.json", hasher=FAST)
    users.add(FITTER, "fitter-password", "maintenance")
    users.add("olga", "olga-password", "operator")
    async with line_rig(tmp_path) as rig:
        service = LineService(rig.sup, users, rig.db)
        recipe = (RECIPES / "long.yaml").read_text()
        assert (await service.execute(FITTER, "mode", {"mode": "maintenance"})).accepted
        start = await service.execute("olga", "start", {"recipe_text": recipe})
        assert not start.accepted and start.reason is not None
        assert "maintenance" in start.reason
        assert (await service.execute(FITTER, "mode", {"mode": "production"})).accepted

        assert (await service.execute("olga", "start", {"recipe_text": recipe})).accepted
        await rig.wait_depositing(passes_done=1)
        mode = await service.execute(FITTER, "mode", {"mode": "maintenance"})
        assert not mode.accepted and mode.reason is not None
        assert "mode change is not allowed in Execute" in mode.reason
        jog = await service.execute(FITTER, "jog", {"axis": "carriage", "direction": "+"})
        assert not jog.accepted
        assert jog.reason == "maintenance actions need maintenance mode: switch modes first"
        test = await service.execute(FITTER, "device_test", {"device": "rf", "power_kw": 5})
        assert not test.accepted
        assert (await service.execute("olga", "abort", {})).accepted


async def test_a_device_test_ends_by_itself_unless_renewed(bench: Bench) -> None:
    await enter(bench)
    maintenance = bench.rig.sup.maintenance
    maintenance.test_lease_s = 0.6
    reply = await bench.ok("device_test", device="mfc_ar", flow_slpm=20.0)
    assert reply.data["lease_s"] == pytest.approx(0.6)
    await bench.rig.wait_for(lambda: bench.plant.gas_flow_slpm["mfc_ar"] > 15, 5, "argon on")
    # Renewed by repeating the command, the flow goes on past one lease...
    for _ in range(4):
        await asyncio.sleep(0.3)
        await bench.ok("device_test", device="mfc_ar", flow_slpm=20.0)
    assert bench.plant.gas_flow_slpm["mfc_ar"] > 15
    # ...and without renewals it stops by itself: a lost client leaves no gas flowing.
    await bench.rig.wait_for(lambda: bench.plant.gas_flow_slpm["mfc_ar"] < 0.5, 5, "argon off")
    assert "mfc_ar" not in maintenance.test_leases
