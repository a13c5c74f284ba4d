"""Defects found by reading (issue 7), each proved on the wire: a test that failed before its
fix and holds the fix since."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from controller.safety.states import Mode, State
from controller.service.line_service import LineService
from controller.service.users import UserStore
from drivers.errors import DeviceTimeout
from tests.system.rig import Rig, line_rig

pytestmark = pytest.mark.slow


async def test_an_abort_while_the_axes_home_keeps_the_run_aborted(rig: Rig) -> None:
    plant = rig.sim.plant
    park = rig.line.axis("torch_slide").park_position_mm or 0.0
    start = asyncio.create_task(rig.start("long"))
    await rig.wait_for(lambda: rig.sup.sm.state is State.STARTING
                       and plant.torch_slide_mm < park - 1, 10, "the torch slide homing")
    assert (await rig.sup.command("abort", "alice")).accepted
    await start
    await rig.wait_state(State.ABORTED)
    await asyncio.sleep(1.0)
    assert rig.sup.sm.state is State.ABORTED
    assert rig.sup.executor is not None and rig.sup.executor.current_op == "idle"
    assert not plant.rf_on and not plant.plasma_lit


async def test_a_trip_during_the_completing_cool_down_ends_in_aborted(rig: Rig) -> None:
    def trip_on_completing(transition: Any) -> None:
        # The rod still hot at the recipe's end: the supervisor's own cool-down runs in
        # Completing, and the cooling water fails during it.
        if transition.to_state is State.COMPLETING:
            rig.sim.plant.rod_temperature_c = 1400.0
            io = rig.sup.telemetry.safety
            assert io is not None
            rig.sup.telemetry.safety = dataclasses.replace(io, rod_temperature_c=1400.0)
            rig.sim.faults.inject("safety_io", "water_flow_low")

    rig.sup.sm.add_listener(trip_on_completing)
    assert (await rig.start("quick")).accepted
    await rig.wait_state(State.ABORTED, State.COMPLETE, timeout_s=60)
    await asyncio.sleep(0.5)
    assert rig.sup.sm.state is State.ABORTED
    assert rig.sup.trip_cause == "water_flow_low"
    assert rig.sup.executor is not None and rig.sup.executor.current_op == "cooldown"
    assert rig.sup.run_tasks.executor_gone


async def test_a_flame_out_while_held_stops_the_oxygen(rig: Rig) -> None:
    plant = rig.sim.plant
    assert (await rig.start("long")).accepted
    await rig.wait_depositing(passes_done=1)
    assert (await rig.sup.command("hold", "alice")).accepted
    await rig.wait_state(State.HELD)
    assert plant.plasma_lit and plant.gas_flow_slpm["mfc_o2"] > 50
    rig.sim.faults.inject("rf", "flame_out")
    await rig.wait_for(lambda: plant.gas_flow_slpm["mfc_o2"] < 1 and not plant.rf_on, 3,
                       "O2 and RF off after the flame-out")
    assert rig.sup.sm.state is State.HELD  # the operator decides what next


async def test_a_failed_start_aborts_to_the_safe_state(rig: Rig) -> None:
    rig.sup.run.homing_budget_s = lambda axis: 0.0  # type: ignore[method-assign]
    result = await rig.start("long")
    assert rig.sup.sm.state is State.ABORTED, result
    await rig.wait_for(lambda: not rig.sim.plant.master_valve_open, 10, "master valve closed")
    await rig.sup.record_flush()
    run = rig.reader().get_run(rig.sup.run_id or 0)
    assert run is not None and run.run.outcome == "aborted"


async def test_clear_resets_no_latch_unless_it_is_accepted_and_records_first(rig: Rig) -> None:
    refused = await rig.sup.command("clear", "alice")  # Idle: nothing to clear
    assert not refused.accepted
    await rig.sup.record_flush()
    events = rig.reader().events_since(0)
    assert not any(e.kind == "setpoint" and e.payload.get("quantity") == "fault_reset"
                   for e in events)
    assert (await rig.start("long")).accepted
    await rig.wait_depositing(passes_done=1)
    rig.sim.faults.inject("rf", "rf_fault", duration_s=0.3)
    await rig.wait_state(State.ABORTED, timeout_s=20)
    for _ in range(20):
        if (await rig.sup.command("clear", "alice")).accepted:
            break
    await rig.sup.record_flush()
    kinds = [(e.kind, e.payload.get("command") or e.payload.get("quantity"))
             for e in rig.reader().events_since(0)]
    reset_command = kinds.index(("command", "reset_latches"))
    fault_reset = kinds.index(("setpoint", "fault_reset"))
    assert reset_command < fault_reset


FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
async def serviced(tmp_path: Path) -> AsyncIterator[tuple[Rig, LineService]]:
    users = UserStore(tmp_path / "users.json", hasher=FAST)
    users.add("max", "fitter-password", "maintenance")
    async with line_rig(tmp_path, time_scale=10.0) as rig:
        yield rig, LineService(rig.sup, users, rig.db)


async def test_the_mode_stays_when_leaving_maintenance_fails(
        serviced: tuple[Rig, LineService]) -> None:
    rig, service = serviced
    assert (await service.execute("max", "mode", {"mode": "maintenance"})).accepted

    async def broken_leave(user: str) -> None:
        raise DeviceTimeout("carriage", "stop")

    rig.sup.maintenance.leave = broken_leave  # type: ignore[method-assign]
    reply = await service.execute("max", "mode", {"mode": "production"})
    assert not reply.accepted
    assert rig.sup.sm.mode is Mode.MAINTENANCE


async def test_a_failed_jog_stop_is_retried_until_it_goes_through(
        serviced: tuple[Rig, LineService]) -> None:
    rig, service = serviced
    plant = rig.sim.plant
    assert (await service.execute("max", "mode", {"mode": "maintenance"})).accepted
    reply = await service.execute("max", "jog", {"axis": "carriage", "direction": "+",
                                                 "speed": 300})
    assert reply.accepted, reply.reason
    await rig.wait_for(lambda: plant.carriage_mm > 3, 5, "carriage moving")
    rig.sim.faults.inject("carriage", "silent")
    stop = await service.execute("max", "jog_stop", {"axis": "carriage"})
    assert not stop.accepted  # the drive did not answer
    assert "carriage" in rig.sup.maintenance.pending_stops
    rig.sim.faults.clear("carriage", "silent")
    await rig.wait_for(lambda: not rig.sup.maintenance.pending_stops, 3, "the stop retried")
    position = plant.carriage_mm
    await asyncio.sleep(0.5)
    assert abs(plant.carriage_mm - position) < 0.5, "the carriage has stopped"
