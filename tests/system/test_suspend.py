"""Flame-out and a lost precursor controller suspend the run, which resumes from the start of
the interrupted pass; a lost diameter gauge is only an alarm (open loop)."""

from __future__ import annotations

import pytest

from controller.safety.alarms import ANNUNCIATED
from controller.safety.states import State
from tests.system.rig import Rig

pytestmark = pytest.mark.slow


async def test_flame_out_suspends_reignites_and_resumes_the_pass(rig: Rig) -> None:
    assert (await rig.start("long")).accepted
    await rig.wait_depositing(passes_done=2)
    executor = rig.sup.executor
    assert executor is not None
    rig.sim.faults.inject("rf", "flame_out", duration_s=0.3)
    await rig.wait_state(State.SUSPENDING, State.SUSPENDED, timeout_s=10)
    passes_at_suspend = executor.cursor.passes_done
    # Precursors off at once, RF off; the rod keeps turning.
    await rig.wait_for(lambda: rig.sim.plant.sicl4_g_min < 0.5 and not rig.sim.plant.rf_on, 5,
                       "precursors and RF off")
    assert rig.sim.plant.spindle_rpm > 5
    # After the purge it re-ignites by itself and goes on depositing.
    await rig.wait_depositing(passes_done=passes_at_suspend + 1)
    assert rig.sup.sm.state is State.EXECUTE
    states = [t.to_state.value for t in rig.sup.sm.history]
    assert states[-4:] == ["Suspending", "Suspended", "Unsuspending", "Execute"]
    assert rig.sup.alarms.status("flame_out").state in ANNUNCIATED


async def test_failed_reignition_stays_suspended_with_an_alarm(rig: Rig) -> None:
    assert (await rig.start("long")).accepted
    await rig.wait_depositing(passes_done=1)
    rig.sim.faults.inject("rf", "ignition_fail")
    rig.sim.faults.inject("rf", "flame_out", duration_s=0.3)
    await rig.wait_for(lambda: rig.sup.alarms.status("reignite_failed").condition, 60,
                       "re-ignition to fail")
    await rig.wait_state(State.SUSPENDED, timeout_s=10)
    assert not rig.sim.plant.rf_on and rig.sim.plant.sicl4_g_min < 0.5
    # The operator retries: hold, then unhold once the igniter works again.
    rig.sim.faults.clear()
    assert (await rig.sup.command("hold", "alice")).accepted
    await rig.wait_state(State.HELD)
    assert (await rig.sup.command("unhold", "alice")).accepted
    await rig.wait_depositing(passes_done=(rig.sup.executor.cursor.passes_done
                                           if rig.sup.executor else 0) + 1)


async def test_lost_precursor_controller_suspends_until_it_returns(rig: Rig) -> None:
    assert (await rig.start("long")).accepted
    await rig.wait_depositing(passes_done=1)
    rig.sim.faults.inject("mfc_sicl4", "silent")
    await rig.wait_state(State.SUSPENDED, timeout_s=20)
    assert not rig.sim.plant.precursor_valve_open
    assert not rig.sim.plant.rf_on
    rig.sim.faults.clear("mfc_sicl4")
    await rig.wait_depositing(passes_done=(rig.sup.executor.cursor.passes_done
                                           if rig.sup.executor else 0) + 1)


async def test_lost_gauge_is_an_alarm_and_deposition_goes_on_open_loop(rig: Rig) -> None:
    assert (await rig.start("long")).accepted
    await rig.wait_depositing(passes_done=1)
    rig.sim.faults.inject("diameter_gauge", "silent")
    await rig.wait_for(lambda: rig.sup.alarms.status("link_gauge").state in ANNUNCIATED, 10,
                       "gauge alarm")
    executor = rig.sup.executor
    assert executor is not None
    done = executor.cursor.passes_done
    before = executor.cursor.diameter_mm or 0.0
    await rig.wait_depositing(passes_done=done + 2)
    assert rig.sup.sm.state is State.EXECUTE
    # The diameter goes on growing from the forecast while the gauge is away.
    assert (executor.cursor.diameter_mm or 0.0) > before
    rig.sim.faults.clear()
    assert (await rig.sup.command("stop", "alice")).accepted


async def test_the_operator_can_stop_a_run_waiting_in_suspended(rig: Rig) -> None:
    assert (await rig.start("long")).accepted
    await rig.wait_depositing(passes_done=1)
    rig.sim.faults.inject("mfc_sicl4", "silent")  # stays lost: the run waits in Suspended
    await rig.wait_state(State.SUSPENDED, timeout_s=20)
    stop = await rig.sup.command("stop", "alice", reason="precursor controller is dead")
    assert stop.accepted, stop.reason
    await rig.wait_state(State.STOPPED, timeout_s=30)
    assert not rig.sim.plant.rf_on
    rig.sim.faults.clear()
