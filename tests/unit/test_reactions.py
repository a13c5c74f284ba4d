"""Safe-state postures (controller/safety/reactions.py) with typed fakes behind the real writer,
beyond what test_interlocks.py pins (RF first, the trip's torch slide, spindle and valves):

- nothing waits for the RF generator's answer: a generator that does not answer delays no
  other write, and one that fails is reported as an RF off not confirmed by its write;
- every target is chosen inside the present envelope: in any state and condition a posture
  meets, the writer refuses none of its writes (the writer refuses anything outside it)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from controller.config.line import PROCESS_GASES
from controller.machine.telemetry import Telemetry
from controller.safety.envelope import Envelope, EnvelopeInputs, compute
from controller.safety.postures import ESTOP, FLAME_OUT, HOLD, TRIP, TRIP_GAS, Carriage, Posture
from controller.safety.reactions import PostureResult, launch_posture, settle_posture
from controller.safety.states import Mode, State
from controller.safety.writer import Actuators, EnvelopeRefused
from drivers.codecs.servo_map import AxisMode
from drivers.servo_axis import AxisStatus
from tests.fakes import RecordingMachine, default_line, recording_machine
from tests.waiting import eventually

LINE = default_line()
TP_A, TP_B = LINE.geometry.turning_point_a_mm, LINE.geometry.turning_point_b_mm


def carriage_at(position_mm: float) -> Telemetry:
    telemetry = Telemetry()
    telemetry.axes["carriage"] = AxisStatus(True, True, False, True, False, False, False, 0,
                                            position_mm, 150.0, AxisMode.POSITION_ABSOLUTE)
    return telemetry


class Bench:
    """A posture applied through the real writer over typed fakes, and what it refused."""

    def __init__(self, env: Envelope) -> None:
        self.env = env
        self.machine: RecordingMachine = recording_machine(LINE)
        self.act = Actuators(self.machine, lambda: self.env)
        self.refused: list[EnvelopeRefused] = []
        self.act.add_refusal_listener(lambda refusal, source: self.refused.append(refusal))

    async def apply(self, posture: Posture, telemetry: Telemetry | None = None,
                    **kwargs: Any) -> PostureResult:
        return await settle_posture(launch_posture(
            self.act, posture, LINE, telemetry or carriage_at((TP_A + TP_B) / 2 + 50),
            source="test", **kwargs))


def envelope(**inputs: Any) -> Envelope:
    return compute(EnvelopeInputs(**{"state": State.ABORTING, "rod_temperature_c": 1500.0,
                                     **inputs}), LINE)


# -- nothing waits for the RF ---------------------------------------------------------------
async def test_a_generator_that_does_not_answer_delays_no_other_write() -> None:
    bench = Bench(envelope(plasma_lit=True))
    answer = asyncio.Event()
    bench.machine.rf.stall = answer
    task = asyncio.create_task(bench.apply(TRIP))

    async def rest_written() -> bool:
        names = set(bench.machine.names())
        return {"safety_io.write_outputs", "mfc_sicl4.set_flow_slpm", "mfc_dopant.set_flow_slpm",
                "spindle.set_velocity", "carriage.stop", "torch_slide.move_absolute",
                *(f"{gas}.set_flow_slpm" for gas in PROCESS_GASES)} <= names

    await eventually(rest_written, what="the posture's other writes")
    assert bench.machine.names()[0] == "rf.rf_off"  # first on the wire all the same
    assert not task.done()
    answer.set()
    result = await task
    assert result.complete and result.rf_off_confirmed_by_write


async def test_a_generator_that_fails_leaves_the_rf_off_unconfirmed_and_the_rest_done() -> None:
    bench = Bench(envelope(plasma_lit=True))
    bench.machine.rf.fail = OSError("link lost")
    result = await bench.apply(TRIP)
    assert set(result.failures) == {"rf"}
    assert not result.rf_off_confirmed_by_write  # the caller then stops the heartbeat
    (outputs,) = bench.machine.calls("safety_io.write_outputs")
    assert not outputs.args[0].rf_permit


async def test_a_hold_that_cannot_reach_the_generator_is_not_an_unconfirmed_rf_off() -> None:
    bench = Bench(envelope(state=State.HOLDING, plasma_lit=True))
    bench.machine.rf.fail = OSError("link lost")
    result = await bench.apply(HOLD)
    assert "rf" in result.failures
    assert result.rf_off_confirmed_by_write  # a hold keeps the RF on: nothing to confirm


# -- targets inside the envelope ------------------------------------------------------------
CASES: dict[str, dict[str, Any]] = {
    "hot rod": {},
    "cold rod": {"rod_temperature_c": 25.0},
    "door open": {"doors_closed": False},
    "exhaust lost": {"conditions": frozenset({"exhaust_lost"})},
    "gas detected": {"conditions": frozenset({"gas_detected"})},
    "water low and gas detected": {"conditions": frozenset({"water_flow_low", "gas_detected"})},
    "estop": {"conditions": frozenset({"estop"})},
    "door open and estop": {"doors_closed": False, "conditions": frozenset({"estop"})},
    "maintenance": {"state": State.IDLE, "mode": Mode.MAINTENANCE},
    "rod temperature unknown": {"rod_temperature_c": None},
}


@pytest.mark.parametrize("posture", [TRIP, TRIP_GAS, ESTOP, FLAME_OUT], ids=lambda p: p.name)
@pytest.mark.parametrize("case", list(CASES))
async def test_every_trip_posture_writes_only_inside_the_envelope(
        posture: Posture, case: str) -> None:
    bench = Bench(envelope(**CASES[case]))
    # In maintenance mode the supervisor leaves the torch slide alone (someone may be there).
    result = await bench.apply(posture, move_torch_slide=case != "maintenance")
    assert bench.refused == [], [str(r) for r in bench.refused]
    assert result.complete
    for call in bench.machine.log:
        if call.method == "set_flow_slpm":
            assert call.args[0] <= bench.env.flow_max_slpm.get(call.device, 0.0) + 1e-9
        if call.method in ("move_absolute", "set_velocity"):
            assert abs(call.args[-1]) <= bench.env.axis_max_speed[call.device] + 1e-9


async def test_a_purge_flow_the_envelope_narrows_is_written_at_the_envelopes_limit() -> None:
    env = envelope(conditions=frozenset({"water_flow_low"}))
    narrowed = {**env.flow_max_slpm, "mfc_n2": LINE.mfc("mfc_n2").purge_slpm / 2}
    bench = Bench(dataclasses.replace(env, flow_max_slpm=narrowed))
    await bench.apply(TRIP)
    (n2,) = bench.machine.calls("mfc_n2.set_flow_slpm")
    assert n2.args == (narrowed["mfc_n2"],)
    assert bench.refused == []


async def test_where_purging_would_vent_every_gas_goes_off_and_the_master_valve_closes(
) -> None:
    bench = Bench(envelope(conditions=frozenset({"scrubber_not_ready"})))
    await bench.apply(TRIP)  # a purge posture, in a condition that forbids purging
    flows = {c.device: c.args[0] for c in bench.machine.log if c.method == "set_flow_slpm"}
    assert flows == dict.fromkeys(("mfc_sicl4", "mfc_dopant", *PROCESS_GASES), 0.0)
    (outputs,) = bench.machine.calls("safety_io.write_outputs")
    assert not outputs.args[0].gas_master_valve


async def test_a_hold_idles_the_plasma_first_and_parks_at_the_nearest_turning_point() -> None:
    bench = Bench(envelope(state=State.HOLDING, plasma_lit=True))
    await bench.apply(HOLD, carriage_at(TP_B - 20))
    first = bench.machine.log[0]
    assert first.name == "rf.set_power_kw" and first.kwargs == {"urgent": True}
    assert first.args == (LINE.supervision.idle_power_kw,)
    (move,) = bench.machine.calls("carriage.move_absolute")
    assert move.args[0] == TP_B
    assert move.args[1] <= LINE.supervision.carriage_reposition_mm_min
    assert bench.machine.calls("rf.rf_off") == []


async def test_a_hold_uses_the_idle_power_it_is_given() -> None:
    bench = Bench(envelope(state=State.HOLDING, plasma_lit=True))
    await bench.apply(HOLD, idle_power_kw=20.0)
    assert bench.machine.calls("rf.set_power_kw")[0].args == (20.0,)


async def test_a_park_moves_the_carriage_at_setup_speed_with_a_door_open() -> None:
    bench = Bench(envelope(doors_closed=False))
    await bench.apply(dataclasses.replace(TRIP, carriage=Carriage.PARK))
    (move,) = bench.machine.calls("carriage.move_absolute")
    assert move.args[0] == (LINE.axis("carriage").park_position_mm or 0.0)
    assert move.args[1] <= bench.env.axis_max_speed["carriage"] < LINE.axis("carriage").max_speed


async def test_no_axis_is_moved_where_no_axis_may_move() -> None:
    bench = Bench(envelope(conditions=frozenset({"estop"})))
    await bench.apply(dataclasses.replace(TRIP, carriage=Carriage.PARK))
    assert bench.machine.calls("carriage.move_absolute") == []
    assert bench.machine.calls("torch_slide.move_absolute") == []
