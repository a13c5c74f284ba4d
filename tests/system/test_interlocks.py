"""Every interlock in the states where it can occur: the safe state of domain.md, the
first-out cause latched in an alarm, and the run in Aborted (or Suspended for flame-out and a
lost precursor controller; only an alarm for a lost gauge)."""

from __future__ import annotations

import time

import pytest

from controller.config.line import cooling_speed_rpm
from controller.safety.alarms import ANNUNCIATED
from controller.safety.interlocks import INTERLOCKS_BY_ID, Reaction
from controller.safety.states import State
from tests.system.rig import Rig

pytestmark = pytest.mark.slow

# (device, fault kind) -> the interlock that must trip first.
TRIPS = [
    (("safety_io", "estop"), "estop"),
    (("safety_io", "safety_relay_open"), "safety_relay_open"),
    (("safety_io", "door_open"), "door_open"),
    (("safety_io", "water_flow_low"), "water_flow_low"),
    (("safety_io", "water_temp_high"), "water_temp_high"),
    (("safety_io", "exhaust_lost"), "exhaust_lost"),
    (("safety_io", "scrubber_not_ready"), "scrubber_not_ready"),
    (("safety_io", "supply_pressure_low"), "gas_supply_low"),
    (("safety_io", "gas_alarm"), "gas_detected"),
    (("safety_io", "o2_enrichment"), "o2_enrichment"),
    (("rf", "rf_fault"), "rf_fault"),
    (("rf", "reflected_high"), "reflected_power_high"),
    (("carriage", "drive_alarm"), "drive_alarm"),
    (("rf", "silent"), "link_rf"),
    (("safety_io", "silent"), "link_safety_io"),
    (("torch_slide", "silent"), "link_drives"),
    (("mfc_o2", "silent"), "link_plasma_gas"),
    (("mfc_ar", "disconnect"), "link_plasma_gas"),
]


def _first_out(rig: Rig) -> str | None:
    first = rig.sup.alarms.first_out()
    return first.definition.id if first else None


def cooling_rotation_ok(rig: Rig) -> bool:
    """The rod turns at its cooling speed while hot; once it has cooled the rest keeper may
    have stopped it (rule 11)."""
    plant = rig.sim.plant
    at_cooling = abs(plant.spindle_rpm - cooling_speed_rpm(rig.line)) < 1.0
    if plant.rod_temperature_c > rig.line.safety_io().rod_rotation_stop_c:
        return at_cooling
    return at_cooling or abs(plant.spindle_rpm) < 0.5


async def assert_safe_state(rig: Rig, *, estop: bool, gas_off: bool,
                            rod_was_hot: bool = True) -> None:
    plant = rig.sim.plant
    await rig.wait_for(lambda: estop or cooling_rotation_ok(rig), 10, "cooling rotation")
    assert not plant.rf_on, "RF must be off"
    assert plant.sicl4_g_min < 0.5, "SiCl4 must be off"
    assert not plant.precursor_valve_open
    if estop:
        assert not plant.drives_powered
    elif rod_was_hot:
        # The trip turned the hot rod at its cooling speed (recorded), whatever came after.
        await rig.sup.record_flush()
        detail = rig.reader().get_run(rig.sup.run_id or 0)
        assert detail is not None
        cooling = cooling_speed_rpm(rig.line)
        assert any(s.device == "spindle" and s.quantity == "velocity_rpm"
                   and abs(s.value - cooling) < 1e-6 and s.source.startswith(("trip:", "abort"))
                   for s in detail.setpoints), "the trip set the cooling speed"
    if gas_off:
        assert not plant.master_valve_open
        assert all(v < 0.2 for v in plant.gas_flow_slpm.values())


@pytest.mark.parametrize(("fault", "interlock"), TRIPS, ids=[t[1] + "-" + t[0][1] for t in TRIPS])
async def test_trip_while_depositing(rig: Rig, fault: tuple[str, str], interlock: str) -> None:
    assert (await rig.start("long")).accepted
    await rig.wait_depositing(passes_done=1)
    rig.sim.faults.inject(*fault)
    await rig.wait_state(State.ABORTED, timeout_s=20)
    assert rig.sup.trip_cause == interlock
    assert _first_out(rig) == interlock
    # Drives lose power on E-stop; otherwise the rod turns at cooling speed while hot.
    await assert_safe_state(rig, estop=interlock == "estop",
                            gas_off=INTERLOCKS_BY_ID[interlock].reaction is Reaction.TRIP_GAS)
    status = rig.sup.alarms.status(interlock)
    assert status.state in ANNUNCIATED and status.latched
    # Clear is refused while the condition persists (a plasma-only condition has gone with the
    # plasma), accepted once it has gone.
    if not INTERLOCKS_BY_ID[interlock].only_with_plasma:
        refused = await rig.sup.command("clear", "alice")
        assert not refused.accepted
    rig.sim.faults.clear()
    await rig.wait_for(lambda: rig.sup.link_alive(fault[0]), 15, "link back")
    for _ in range(20):  # the condition goes as the fresh readings come in
        if (await rig.sup.command("clear", "alice")).accepted:
            break
    assert rig.sup.sm.state is State.STOPPED
    assert not rig.sup.start_blockers()


@pytest.mark.parametrize("when", ["held", "starting"])
async def test_trip_in_other_active_states(rig: Rig, when: str) -> None:
    assert (await rig.start("long")).accepted
    if when == "held":
        await rig.wait_depositing(passes_done=1)
        assert (await rig.sup.command("hold", "alice")).accepted
        await rig.wait_state(State.HELD)
    else:
        await rig.wait_for(lambda: rig.sim.plant.plasma_lit, 30, "ignition")
    rig.sim.faults.inject("safety_io", "water_flow_low")
    await rig.wait_state(State.ABORTED, timeout_s=20)
    assert _first_out(rig) == "water_flow_low"
    # Just after ignition the rod may not be hot yet: then the trip has no rod to turn.
    await assert_safe_state(rig, estop=False, gas_off=False, rod_was_hot=when == "held")


async def test_trip_in_idle_raises_an_alarm_and_blocks_start(rig: Rig) -> None:
    rig.sim.faults.inject("safety_io", "door_open")
    rig.sim.faults.inject("safety_io", "scrubber_not_ready")
    await rig.wait_for(lambda: rig.sup.alarms.status("scrubber_not_ready").condition, 5, "alarm")
    assert rig.sup.sm.state is State.IDLE
    result = await rig.start("quick")
    assert not result.accepted and "scrubber_not_ready" in (result.reason or "")


async def test_first_out_is_the_first_cause_of_a_burst(rig: Rig) -> None:
    assert (await rig.start("long")).accepted
    await rig.wait_depositing(passes_done=1)
    rig.sim.faults.inject("safety_io", "exhaust_lost")
    await rig.wait_state(State.ABORTED, timeout_s=20)
    rig.sim.faults.inject("safety_io", "water_flow_low")
    await rig.wait_for(lambda: rig.sup.alarms.status("water_flow_low").condition, 5, "second")
    assert _first_out(rig) == "exhaust_lost"
    assert not rig.sup.alarms.status("water_flow_low").first_out


async def test_an_unhandled_error_in_the_recipe_ends_in_the_safe_state(rig: Rig) -> None:
    assert (await rig.start("long")).accepted
    await rig.wait_depositing(passes_done=1)
    executor = rig.sup.executor
    assert executor is not None

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the executor")

    executor.pass_ended = broken  # type: ignore[method-assign]
    await rig.wait_state(State.ABORTED, timeout_s=20)
    assert rig.sup.trip_cause == "internal_error"
    assert rig.sup.alarms.status("internal_error").state in ANNUNCIATED
    await assert_safe_state(rig, estop=False, gas_off=False)


async def test_a_carriage_that_stops_oscillating_by_itself_ends_the_run_safely(rig: Rig) -> None:
    """Stopped at the drive (its panel, say) with no interlock to name it: after the safety
    cycle's grace the deposit step fails, and the run ends in the safe state, never a run
    depositing on a standing carriage."""
    assert (await rig.start("long")).accepted
    await rig.wait_depositing(passes_done=1)
    await rig.sup.machine.axes["carriage"].stop()
    await rig.wait_state(State.ABORTED, timeout_s=20)
    assert rig.sup.trip_cause == "step_failed"
    await assert_safe_state(rig, estop=False, gas_off=False)


async def test_an_rf_generator_that_cannot_be_told_is_switched_off_by_the_rf_permit(
        rig: Rig) -> None:
    assert (await rig.start("long")).accepted
    await rig.wait_depositing(passes_done=1)
    rig.sim.faults.inject("rf", "silent")
    detected = time.monotonic()
    # The RF-off write cannot go out: the PLC's RF permit, dropped in the same posture,
    # withdraws the RF enable well before any heartbeat watchdog could.
    await rig.wait_for(lambda: not rig.sim.plant.rf_enable, 10, "the PLC to drop RF enable")
    link_timeout = rig.line.devices["rf"].link_timeout_s
    assert time.monotonic() - detected < link_timeout + 0.5
    await rig.wait_state(State.ABORTED, timeout_s=20)
    assert rig.sup.heartbeat_enabled, "the permit was confirmed: no need to stop the heartbeat"
    io = rig.sup.telemetry.safety
    assert io is not None and not io.heartbeat_latched
