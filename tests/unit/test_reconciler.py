"""Reconciliation every safety cycle, with recording fakes: corrections go out (urgent, RF
first, one in flight per actuator) and an output that does not follow escalates."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from controller.config.line import load_line_config
from controller.machine.telemetry import Telemetry
from controller.safety.envelope import Envelope, EnvelopeInputs, compute
from controller.safety.reconciler import Reconciler
from controller.safety.states import Mode, State
from controller.safety.writer import Actuators
from drivers.codecs.servo_map import AxisMode, AxisStatus
from drivers.mfc import MfcReading
from drivers.rf_generator import RfStatus
from drivers.safety_io import SafetyOutputs
from tests.fakes import RecordingMachine, healthy_inputs, recording_machine

LINE = load_line_config()
TIMEOUT = LINE.supervision.follow_timeout_s


class Harness:
    def __init__(self, **inputs: Any) -> None:
        self.env: Envelope = compute(EnvelopeInputs(**inputs), LINE)
        self.machine: RecordingMachine = recording_machine()
        self.telemetry = Telemetry()
        self.act = Actuators(self.machine, lambda: self.env)  # type: ignore[arg-type]
        self.alarms: dict[str, bool] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.rec = Reconciler(self.act, self.telemetry, LINE, spawn=self._spawn,
                              alarm=self.alarms.__setitem__)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(work, name=name))

    async def cycle(self, now: float) -> None:
        self.rec.cycle(self.env, now)
        await asyncio.gather(*self.tasks)
        self.tasks.clear()

    def link(self, device: str) -> None:
        health = self.telemetry.link(device)
        health.ever_ok = True
        health.last_ok_wall = 10**9  # fresh for the whole test


def mfc(mass: float) -> MfcReading:
    return MfcReading(14.7, 25.0, mass, mass, mass, "O2", frozenset())


def rf(on: bool, forward: float = 0.0) -> RfStatus:
    return RfStatus(forward, 0.0, forward, True, on, on, False, False, 0, False)


async def test_rf_goes_off_first_and_the_permit_drops_where_rf_is_not_permitted() -> None:
    h = Harness(state=State.ABORTED, rod_temperature_c=25.0)
    h.act.commanded.rf_on = True
    h.act.commanded.outputs = SafetyOutputs(rf_permit=True, exhaust_fan=True)
    await h.cycle(0.0)
    names = h.machine.names()
    assert names[0] == "rf.rf_off"
    assert h.machine.calls("rf.rf_off")[0].kwargs == {"urgent": True}
    (outputs,) = h.machine.calls("safety_io.write_outputs")
    assert not outputs.args[0].rf_permit


async def test_a_flow_commanded_above_the_envelope_is_brought_down() -> None:
    h = Harness(state=State.ABORTED, conditions=frozenset({"gas_detected"}))
    h.act.commanded.flows_slpm["mfc_o2"] = 80.0
    await h.cycle(0.0)
    (write,) = h.machine.calls("mfc_o2.set_flow_slpm")
    assert write.args == (0.0,) and write.kwargs == {"urgent": True}


async def test_one_correction_in_flight_and_no_faster_than_its_retry() -> None:
    h = Harness(state=State.ABORTED)
    h.act.commanded.flows_slpm["mfc_o2"] = 80.0
    h.rec.cycle(h.env, 0.0)
    h.rec.cycle(h.env, 0.001)  # the first correction still in flight
    await asyncio.gather(*h.tasks)
    assert len(h.machine.calls("mfc_o2.set_flow_slpm")) == 1


async def test_a_gas_that_does_not_follow_closes_its_valve_and_raises_the_alarm() -> None:
    h = Harness(state=State.ABORTED, rod_temperature_c=25.0)
    h.act.commanded.outputs = SafetyOutputs(gas_master_valve=True, exhaust_fan=True)
    h.telemetry.mfcs["mfc_o2"] = mfc(80.0)  # the controller cannot be told (link lost)
    await h.cycle(0.0)
    assert not h.alarms.get("follow_gas")
    await h.cycle(TIMEOUT + 0.5)
    assert "gas_master_valve" in h.rec.escalated
    closing = [c for c in h.machine.calls("safety_io.write_outputs")
               if not c.args[0].gas_master_valve]
    assert closing, "the master valve closed"
    h.telemetry.mfcs["mfc_o2"] = mfc(0.0)
    await h.cycle(TIMEOUT + 1.0)
    assert "gas_master_valve" not in h.rec.escalated


async def test_rf_that_stays_on_drops_the_permit_then_stops_the_heartbeat() -> None:
    h = Harness(state=State.ABORTED, rod_temperature_c=25.0)
    h.telemetry.rf = rf(on=True, forward=20.0)
    h.link("safety_io")
    h.telemetry.safety = healthy_inputs(outputs_effective=SafetyOutputs(rf_permit=True))
    await h.cycle(0.0)
    await h.cycle(TIMEOUT + 0.1)
    assert "rf_permit" in h.rec.escalated and not h.rec.stop_heartbeat
    await h.cycle(2 * TIMEOUT + 0.2)
    assert h.rec.stop_heartbeat


async def test_rf_whose_enable_the_plc_withdrew_needs_no_heartbeat_stop() -> None:
    h = Harness(state=State.ABORTED, rod_temperature_c=25.0)
    h.telemetry.rf = rf(on=True)
    h.link("safety_io")
    h.telemetry.safety = healthy_inputs(outputs_effective=SafetyOutputs(rf_permit=False))
    await h.cycle(0.0)
    await h.cycle(3 * TIMEOUT)
    assert not h.rec.stop_heartbeat


async def test_a_door_opened_mid_move_stops_the_axis_within_the_cycle() -> None:
    h = Harness(state=State.IDLE, mode=Mode.MAINTENANCE, doors_closed=False,
                rod_temperature_c=25.0)
    h.act.commanded.axis_speeds["carriage"] = 1000.0
    await h.cycle(0.0)
    (stop,) = h.machine.calls("carriage.stop")
    assert stop.kwargs == {"urgent": True}


async def test_the_exhaust_is_switched_on_while_gas_may_be_present() -> None:
    h = Harness(state=State.ABORTED, conditions=frozenset({"gas_detected"}))
    await h.cycle(0.0)
    (outputs,) = h.machine.calls("safety_io.write_outputs")
    assert outputs.args[0].exhaust_fan


async def test_an_axis_that_does_not_slow_down_is_disabled_after_the_follow_timeout() -> None:
    h = Harness(state=State.IDLE, mode=Mode.MAINTENANCE, doors_closed=False,
                rod_temperature_c=25.0)
    h.link("carriage")
    h.telemetry.axes["carriage"] = AxisStatus(
        enabled=True, moving=True, in_position=False, homed=True, limit_positive=False,
        limit_negative=False, alarm=False, alarm_code=0, position_mm=500.0, velocity=2000.0,
        mode=AxisMode.JOG)
    await h.cycle(0.0)
    assert h.machine.calls("carriage.stop"), "a stop first"
    assert not h.machine.calls("carriage.disable")
    await h.cycle(TIMEOUT + 0.5)  # still moving at 2000 mm/min: the drive is disabled
    assert h.machine.calls("carriage.disable")
    assert h.alarms["follow_axis"] is True
