"""The safety envelope on the wire (domain.md rules 1, 6, 10, 11), against the simulated line
with faults injected through its fault board: the cases that a per-path, per-moment check got
wrong, now held as levels every safety cycle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from controller.config.line import cooling_speed_rpm
from controller.safety.states import Mode, State
from controller.service.line_service import LineService
from controller.service.protocol import CommandReply
from controller.service.users import UserStore
from drivers.errors import DeviceRangeError
from tests.system.rig import Rig, line_rig

pytestmark = pytest.mark.slow

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def gases_flowing(rig: Rig) -> dict[str, float]:
    return {k: v for k, v in rig.sim.plant.gas_flow_slpm.items() if v > 0.2}


async def test_water_trip_purges_then_acid_gas_closes_every_gas(rig: Rig) -> None:
    """Rule 10: a worse condition after a first trip escalates at once."""
    assert (await rig.start("long")).accepted
    await rig.wait_depositing(passes_done=1)
    rig.sim.faults.inject("safety_io", "water_flow_low")
    await rig.wait_state(State.ABORTED, timeout_s=20)
    plant = rig.sim.plant
    n2_purge = rig.line.mfc("mfc_n2").purge_slpm
    await rig.wait_for(lambda: plant.master_valve_open
                       and abs(plant.gas_flow_slpm["mfc_n2"] - n2_purge) < 1, 5, "the purge")
    rig.sim.faults.inject("safety_io", "gas_alarm")
    detected = time.monotonic()
    await rig.wait_for(lambda: not plant.master_valve_open and not gases_flowing(rig), 5,
                       "every gas off, master valve closed")
    assert time.monotonic() - detected < 2
    assert plant.exhaust_fan_on, "the exhaust keeps running while gas may be present"
    assert not plant.rf_on and not plant.precursor_valve_open
    first = rig.sup.alarms.first_out()
    assert first is not None and first.definition.id == "water_flow_low"
    assert rig.sup.alarms.status("gas_detected").condition
    # Clearing the gas alarm lifts the limit but starts nothing: no purge by itself.
    rig.sim.faults.clear("safety_io", "gas_alarm")
    await rig.wait_for(lambda: not rig.sup.alarms.status("gas_detected").condition, 5,
                       "the gas alarm gone")
    await rig.wait_for(lambda: rig.sup.act.envelope().master_valve_allowed, 5, "limit lifted")
    await asyncio.sleep(0.3)
    assert not plant.master_valve_open and not gases_flowing(rig)


@pytest.mark.parametrize("fault", ["scrubber_not_ready", "exhaust_lost"])
async def test_a_scrubber_or_exhaust_trip_does_not_purge(rig: Rig, fault: str) -> None:
    assert (await rig.start("long")).accepted
    await rig.wait_depositing(passes_done=1)
    rig.sim.faults.inject("safety_io", fault)
    await rig.wait_state(State.ABORTED, timeout_s=20)
    plant = rig.sim.plant
    await rig.wait_for(lambda: not plant.master_valve_open and not gases_flowing(rig), 5,
                       "every gas off")
    await rig.sup.record_flush()
    postures = [e.payload for e in rig.reader().events_since(0) if e.kind == "posture"]
    assert postures and postures[0]["posture"] == "trip_gas", postures
    # Then the acid-gas detector: still nothing flows, and the fan stays on.
    rig.sim.faults.inject("safety_io", "gas_alarm")
    await rig.wait_for(lambda: rig.sup.alarms.status("gas_detected").condition, 5, "gas alarm")
    assert not plant.master_valve_open and not gases_flowing(rig) and plant.exhaust_fan_on


@dataclass
class Maintained:
    """The line in maintenance mode, and its service for the maintenance user."""

    rig: Rig
    service: LineService

    async def do(self, command: str, **args: object) -> CommandReply:
        return await self.service.execute("max", command, dict(args))


@pytest.fixture
async def maint(tmp_path: Path) -> AsyncIterator[Maintained]:
    users = UserStore(tmp_path / "users.json", hasher=FAST)
    users.add("max", "fitter-password", "maintenance")
    async with line_rig(tmp_path, time_scale=10.0) as rig:
        m = Maintained(rig, LineService(rig.sup, users, rig.db))
        assert (await m.do("mode", mode="maintenance")).accepted
        assert rig.sup.sm.mode is Mode.MAINTENANCE
        yield m


async def test_no_sicl4_device_test_with_the_exhaust_lost(maint: Maintained) -> None:
    rig, plant = maint.rig, maint.rig.sim.plant
    rig.sim.faults.inject("safety_io", "exhaust_lost")
    await rig.wait_for(lambda: not rig.sup.envelope_now().master_valve_allowed, 5, "exhaust")
    reply = await maint.do("device_test", device="mfc_sicl4", flow_slpm=1)
    assert not reply.accepted
    assert reply.reason is not None and "exhaust_lost" in reply.reason
    await asyncio.sleep(0.5)
    assert plant.gas_flow_slpm["mfc_sicl4"] < 0.05 and not plant.master_valve_open
    assert "mfc_sicl4" not in rig.sup.maintenance.test_leases


async def test_a_device_test_in_progress_ends_when_the_exhaust_is_lost(
        maint: Maintained) -> None:
    rig, plant = maint.rig, maint.rig.sim.plant
    reply = await maint.do("device_test", device="mfc_sicl4", flow_slpm=1)
    assert reply.accepted, reply.reason
    await rig.wait_for(lambda: plant.gas_flow_slpm["mfc_sicl4"] > 0.8, 5, "SiCl4 flowing")
    rig.sim.faults.inject("safety_io", "exhaust_lost")
    await rig.wait_for(lambda: plant.gas_flow_slpm["mfc_sicl4"] < 0.05
                       and not plant.master_valve_open, 3, "SiCl4 off, master valve closed")
    assert rig.sup.reconciler.corrections > 0


async def test_an_rf_test_goes_off_when_a_door_opens(maint: Maintained) -> None:
    rig, plant = maint.rig, maint.rig.sim.plant
    # The torch needs argon to light: both tests run together, as a technician would.
    assert (await maint.do("device_test", device="mfc_ar", flow_slpm=30)).accepted
    await rig.wait_for(lambda: plant.gas_flow_slpm["mfc_ar"] > 25, 5, "argon")
    reply = await maint.do("device_test", device="rf", power_kw=12)
    assert reply.accepted, reply.reason
    await rig.wait_for(lambda: plant.rf_on and plant.rf_forward_kw > 5, 10, "RF on")
    rig.sim.faults.inject("safety_io", "door_open")
    opened = time.monotonic()
    await rig.wait_for(lambda: not plant.rf_on and not plant.rf_enable, 2, "RF off")
    assert time.monotonic() - opened < 1.0
    # The door shut again: the limit lifts, the RF stays off (nothing restarts by itself).
    rig.sim.faults.clear("safety_io", "door_open")
    await asyncio.sleep(0.5)
    assert not plant.rf_on


async def test_after_an_estop_reset_a_hot_rod_turns_again_only_by_command(tmp_path: Path) -> None:
    users = UserStore(tmp_path / "users.json", hasher=FAST)
    users.add("olga", "operator-password", "operator")
    async with line_rig(tmp_path) as rig:
        service = LineService(rig.sup, users, rig.db)
        plant = rig.sim.plant
        assert (await rig.start("long")).accepted
        await rig.wait_depositing(passes_done=1)

        async def keep_hot() -> None:  # the plant's rod cools in a fraction of a second at x200
            while True:
                plant.rod_temperature_c = 900.0
                await asyncio.sleep(0.005)

        hot = asyncio.create_task(keep_hot())
        try:
            rig.sim.faults.inject("safety_io", "estop")
            await rig.wait_state(State.ABORTED, timeout_s=20)
            await rig.wait_for(lambda: abs(plant.spindle_rpm) < 0.5, 10, "drives unpowered")
            rig.sim.faults.clear("safety_io", "estop")  # the E-stop is reset
            await rig.wait_for(lambda: rig.sup.alarms.status("cooling_rotation_needed").condition,
                               5, "the alarm asking for cooling rotation")
            await asyncio.sleep(0.5)
            assert abs(plant.spindle_rpm) < 0.5, "nothing restarts by itself"
            reply = await service.execute("olga", "cool_rotation", {})
            assert reply.accepted, reply.reason
            cooling = cooling_speed_rpm(rig.line)
            await rig.wait_for(lambda: abs(plant.spindle_rpm - cooling) < 1.0, 5, "turning")
            await rig.wait_for(
                lambda: not rig.sup.alarms.status("cooling_rotation_needed").condition, 5,
                "the alarm gone")
        finally:
            hot.cancel()


async def test_the_drivers_range_check_is_the_last_guard(rig: Rig) -> None:
    """Nothing clamps silently: a setpoint the envelope lets through (a decrease) but the
    device cannot take reaches the driver, whose range check refuses it."""
    with pytest.raises(DeviceRangeError):
        await rig.sup.act.set_flow_slpm("mfc_ar", -1.0, "test")
    with pytest.raises(DeviceRangeError):
        await rig.sup.act.set_power_kw(-5.0, "test")


async def test_after_a_no_purge_trip_a_purge_runs_only_by_command(tmp_path: Path) -> None:
    users = UserStore(tmp_path / "users.json", hasher=FAST)
    users.add("olga", "operator-password", "operator")
    async with line_rig(tmp_path) as rig:
        service = LineService(rig.sup, users, rig.db)
        plant = rig.sim.plant
        assert (await rig.start("long")).accepted
        await rig.wait_depositing(passes_done=1)
        rig.sim.faults.inject("safety_io", "scrubber_not_ready")
        await rig.wait_state(State.ABORTED, timeout_s=20)
        refused = await service.execute("olga", "purge", {})
        assert not refused.accepted and "scrubber_not_ready" in (refused.reason or "")
        rig.sim.faults.clear("safety_io", "scrubber_not_ready")
        await rig.wait_for(lambda: rig.sup.act.envelope().master_valve_allowed, 5, "scrubber")
        await asyncio.sleep(0.5)
        assert not plant.master_valve_open, "nothing purges by itself"
        reply = await service.execute("olga", "purge", {})
        assert reply.accepted, reply.reason
        n2 = rig.line.mfc("mfc_n2").purge_slpm
        await rig.wait_for(lambda: plant.master_valve_open
                           and abs(plant.gas_flow_slpm["mfc_n2"] - n2) < 1, 5, "purging")
        # Then, after the purge time, every gas off and the valves closed: at rest.
        await rig.wait_for(lambda: not plant.master_valve_open and not gases_flowing(rig), 10,
                           "the purge ended")
