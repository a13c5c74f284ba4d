"""Judgement with typed fakes: signals from telemetry, interlocks annunciated once per change,
a flame-out judged wherever the plasma is meant to burn."""

from __future__ import annotations

from typing import Any

import pytest

from controller.config.line import load_line_config
from controller.machine.telemetry import Telemetry
from controller.safety.alarm_catalog import alarm_definitions
from controller.safety.alarms import AlarmManager
from controller.safety.envelope import EnvelopeInputs, compute
from controller.safety.judgement import PLASMA_HELD_STATES, Judge, build_signals
from controller.safety.states import State
from controller.safety.writer import Actuators
from tests.fakes import healthy_inputs, recording_machine

LINE = load_line_config()


def judge_with(**inputs: Any) -> tuple[Judge, Telemetry, AlarmManager]:
    telemetry = Telemetry()
    telemetry.safety = healthy_inputs(**inputs)
    alarms = AlarmManager(alarm_definitions(LINE))
    env = compute(EnvelopeInputs(), LINE)
    act = Actuators(recording_machine(), lambda: env)  # type: ignore[arg-type]
    return Judge(LINE, telemetry, alarms, act), telemetry, alarms


def signals(telemetry: Telemetry, *, expected: bool = False,
            state: State = State.EXECUTE) -> Any:
    return build_signals(telemetry, LINE, plasma_expected=expected, state=state)


def test_healthy_inputs_trip_nothing() -> None:
    judge, telemetry, _ = judge_with()
    assert judge.judge(signals(telemetry), State.EXECUTE, None, 0.0) == []


@pytest.mark.parametrize(("inputs", "interlock"), [
    ({"room_o2_pct": 25.0}, "o2_enrichment"),
    ({"gas_detector_ppm": 5.0}, "gas_detected"),
    ({"exhaust_draft_pa": 0.0}, "exhaust_lost"),
    ({"estop_ok": False}, "estop"),
])
def test_an_input_trips_its_interlock_and_is_annunciated_once(inputs: dict[str, Any],
                                                              interlock: str) -> None:
    judge, telemetry, alarms = judge_with(**inputs)
    tripped = judge.judge(signals(telemetry), State.IDLE, None, 1.0)
    assert tripped[0].id == interlock
    status = alarms.status(interlock)
    assert status.condition and status.first_out
    since = status.since
    judge.judge(signals(telemetry), State.IDLE, None, 2.0)  # still tripped: no new event
    assert alarms.status(interlock).since == since


def test_the_worst_reaction_comes_first() -> None:
    judge, telemetry, _ = judge_with(water_flow_l_min=5.0, gas_detector_ppm=5.0)
    tripped = judge.judge(signals(telemetry), State.EXECUTE, None, 0.0)
    assert [i.id for i in tripped][:2] == ["gas_detected", "water_flow_low"]


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_a_flame_out_is_judged_wherever_the_plasma_is_meant_to_burn(state: State) -> None:
    _, telemetry, _ = judge_with(plasma_optical=False)
    flame_out = signals(telemetry, expected=True, state=state).flame_out
    assert flame_out is (state in PLASMA_HELD_STATES)
    assert {State.EXECUTE, State.HELD, State.UNSUSPENDING} <= PLASMA_HELD_STATES


def test_without_the_safety_io_its_inputs_read_healthy_until_it_answers() -> None:
    telemetry = Telemetry()
    s = signals(telemetry)
    assert s.estop_ok and s.doors_closed and s.room_o2_pct < LINE.safety_io().room_o2_trip_pct
