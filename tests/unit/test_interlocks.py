"""The interlock matrix and the safe-state postures, tested from their data."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from controller.config.line import cooling_speed_rpm, load_line_config
from controller.machine.telemetry import Telemetry
from controller.safety.envelope import EnvelopeInputs, compute
from controller.safety.interlocks import (
    INTERLOCKS,
    Interlock,
    Reaction,
    Signals,
    blocking_start,
    evaluate,
)
from controller.safety.postures import ESTOP, HOLD, POSTURE_FOR_REACTION, TRIP, TRIP_GAS
from controller.safety.reactions import (
    launch_posture,
    nearest_turning_point,
    settle_posture,
)
from controller.safety.states import State
from controller.safety.writer import Actuators
from tests.fakes import RecordingMachine, recording_machine

LINE = load_line_config()
IO = LINE.safety_io()
# Aborting a deposition with a hot rod: what a trip's posture writes into.
ABORTING = compute(EnvelopeInputs(state=State.ABORTING, plasma_lit=True,
                                  rod_temperature_c=1500.0), LINE)


def writer(machine: Any) -> Actuators:
    return Actuators(machine, lambda: ABORTING)


def healthy() -> Signals:
    return Signals(water_flow_l_min=IO.water_flow_min_l_min + 5,
                   water_temp_c=IO.water_temp_max_c - 10,
                   exhaust_draft_pa=IO.exhaust_trip_pa - 30,
                   gas_detector_ppm=0.0)


def tripping(interlock: Interlock) -> Signals:
    """Healthy signals with just this interlock's condition made true."""
    value: Any
    if interlock.op == "false":
        value = False
    elif interlock.op == "true":
        value = True
    elif interlock.op == "below":
        value = interlock.limit_value(LINE) - 1
    else:
        value = interlock.limit_value(LINE) + 1
    signals = dataclasses.replace(healthy(), **{interlock.signal: value})
    if interlock.only_with_plasma:
        signals = dataclasses.replace(signals, plasma_lit=True, plasma_expected=True)
    return signals


def test_healthy_signals_trip_nothing() -> None:
    assert evaluate(healthy(), LINE) == []
    assert blocking_start(healthy(), LINE) == []


@pytest.mark.parametrize("interlock", INTERLOCKS, ids=[i.id for i in INTERLOCKS])
def test_each_interlock_trips_on_its_condition_alone(interlock: Interlock) -> None:
    tripped = evaluate(tripping(interlock), LINE)
    assert [i.id for i in tripped] == [interlock.id]


@pytest.mark.parametrize("interlock", [i for i in INTERLOCKS if i.only_with_plasma],
                         ids=lambda i: i.id)
def test_plasma_only_interlocks_are_quiet_without_plasma(interlock: Interlock) -> None:
    signals = dataclasses.replace(tripping(interlock), plasma_lit=False, plasma_expected=False)
    assert evaluate(signals, LINE) == []


@pytest.mark.parametrize("interlock", INTERLOCKS, ids=[i.id for i in INTERLOCKS])
def test_limits_come_from_the_line_configuration(interlock: Interlock) -> None:
    if interlock.op in ("below", "above"):
        assert isinstance(interlock.limit, str)  # a config field, never a constant here
        interlock.limit_value(LINE)


def test_the_most_severe_reaction_comes_first() -> None:
    estop = next(i for i in INTERLOCKS if i.id == "estop")
    water = next(i for i in INTERLOCKS if i.id == "water_flow_low")
    signals = dataclasses.replace(tripping(water), estop_ok=False)
    assert [i.id for i in evaluate(signals, LINE)][:2] == [estop.id, water.id]


def test_gas_detection_closes_every_gas() -> None:
    gas = next(i for i in INTERLOCKS if i.id == "gas_detected")
    assert POSTURE_FOR_REACTION[gas.reaction] is TRIP_GAS
    assert TRIP_GAS.gases.value == "off"


def test_advisory_alarms_do_not_block_a_start() -> None:
    gauge = next(i for i in INTERLOCKS if i.id == "link_gauge")
    assert gauge.reaction is Reaction.ALARM
    assert blocking_start(tripping(gauge), LINE) == []


class _Recorder:
    """Drivers that record every call in order (a shared log) instead of touching a wire."""

    def __init__(self, name: str, log: list[str], full_scale: float = 100.0) -> None:
        self.name = name
        self.log = log
        self.full_scale_slpm = full_scale

    def __getattr__(self, attr: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> None:
            self.log.append(f"{self.name}.{attr}")
        return call


def _machine(log: list[str]) -> Any:
    @dataclasses.dataclass
    class FakeMachine:
        rf: Any
        safety_io: Any
        mfcs: dict[str, Any]
        axes: dict[str, Any]

    return FakeMachine(
        rf=_Recorder("rf", log), safety_io=_Recorder("safety_io", log),
        mfcs={n: _Recorder(n, log) for n in ("mfc_ar", "mfc_o2", "mfc_n2", "mfc_sicl4",
                                              "mfc_dopant")},
        axes={n: _Recorder(n, log) for n in ("spindle", "carriage", "torch_slide")},
    )


@pytest.mark.parametrize("posture", [TRIP, TRIP_GAS, ESTOP], ids=lambda p: p.name)
async def test_rf_off_is_the_first_write_of_every_trip(posture: Any) -> None:
    log: list[str] = []
    act = writer(_machine(log))
    result = await settle_posture(launch_posture(act, posture, LINE, Telemetry(), source="test"))
    assert log[0] == "rf.rf_off"
    assert result.complete
    assert "mfc_sicl4.set_flow_slpm" in log
    assert "mfc_dopant.set_flow_slpm" in log
    if posture is ESTOP:
        assert not any(entry.startswith(("spindle", "carriage")) for entry in log)
    else:
        assert "spindle.set_velocity" in log  # the rod keeps turning
        assert "carriage.stop" in log


async def test_hold_keeps_the_plasma_and_parks_at_a_turning_point() -> None:
    log: list[str] = []
    holding = compute(EnvelopeInputs(state=State.HOLDING, plasma_lit=True,
                                     rod_temperature_c=1500.0), LINE)
    act = Actuators(_machine(log), lambda: holding)
    await settle_posture(launch_posture(act, HOLD, LINE, Telemetry(), source="test"))
    assert log[0] == "rf.set_power_kw"
    assert "rf.rf_off" not in log


async def test_a_failing_device_does_not_stop_the_other_writes() -> None:
    log: list[str] = []
    machine = _machine(log)

    class Broken(_Recorder):
        def __getattr__(self, attr: str) -> Any:
            async def call(*args: Any, **kwargs: Any) -> None:
                raise OSError("link lost")
            return call

    machine.mfcs["mfc_o2"] = Broken("mfc_o2", log)
    result = await settle_posture(
        launch_posture(writer(machine), TRIP, LINE, Telemetry(), source="test"))
    assert "mfc_o2" in result.failures
    assert "mfc_sicl4.set_flow_slpm" in log and "spindle.set_velocity" in log


def test_nearest_turning_point() -> None:
    a, b = LINE.geometry.turning_point_a_mm, LINE.geometry.turning_point_b_mm
    assert nearest_turning_point(LINE, a + 10) == a
    assert nearest_turning_point(LINE, b - 10) == b


# -- the trip posture chooses its targets inside the envelope (rule 10) ----------------------
async def _trip_posture(*, move_torch_slide: bool = True, **inputs: Any) -> RecordingMachine:
    env = compute(EnvelopeInputs(**{"state": State.ABORTING, **inputs}), LINE)
    machine = recording_machine()
    act = Actuators(machine, lambda: env)  # type: ignore[arg-type]
    await settle_posture(launch_posture(act, TRIP, LINE, Telemetry(), source="test",
                                        move_torch_slide=move_torch_slide))
    return machine


async def test_the_trip_retracts_the_torch_slide_at_setup_speed_with_a_door_open() -> None:
    machine = await _trip_posture(doors_closed=False, rod_temperature_c=1500.0)
    (move,) = machine.calls("torch_slide.move_absolute")
    slide = LINE.axis("torch_slide")
    assert move.args[1] <= slide.max_speed * slide.setup_speed_fraction


async def test_the_trip_leaves_the_torch_slide_alone_in_maintenance_mode() -> None:
    machine = await _trip_posture(move_torch_slide=False, rod_temperature_c=1500.0)
    assert machine.calls("torch_slide.move_absolute") == []


async def test_the_trip_turns_the_spindle_only_while_the_rod_is_hot() -> None:
    cold = await _trip_posture(rod_temperature_c=25.0)
    assert cold.calls("spindle.set_velocity") == []
    hot = await _trip_posture(rod_temperature_c=900.0)
    (turn,) = hot.calls("spindle.set_velocity")
    assert turn.args[0] == cooling_speed_rpm(LINE)


async def test_the_trip_drops_the_rf_permit_with_the_rf_off_and_never_purges_into_the_room(
) -> None:
    machine = await _trip_posture(conditions=frozenset({"exhaust_lost"}),
                                  rod_temperature_c=1500.0)
    assert machine.names()[0] == "rf.rf_off"
    (outputs,) = machine.calls("safety_io.write_outputs")
    assert not outputs.args[0].rf_permit and not outputs.args[0].gas_master_valve
    assert all(c.args[0] == 0.0 for c in machine.log if c.method == "set_flow_slpm")
