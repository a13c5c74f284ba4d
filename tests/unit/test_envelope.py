"""The safety envelope, tested from its tables: every row does what it says, rows combine to
the most restrictive, and docs/safety.md prints the data as it is."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from controller.config.line import load_line_config
from controller.safety import table_doc
from controller.safety.envelope import (
    CONDITION_LIMITS,
    LINEAR_AXES,
    PRECURSORS,
    PROCESS_GASES,
    STATE_LIMITS,
    Envelope,
    EnvelopeInputs,
    GasLimit,
    MotionLimit,
    RfLimit,
    compute,
    cooling_speed_rpm,
    unknown_conditions,
)
from controller.safety.interlocks import INTERLOCKS
from controller.safety.states import Mode, State

LINE = load_line_config()
HOT, COLD = 1500.0, 25.0


def depositing(*conditions: str, **changes: object) -> Envelope:
    fields: dict[str, object] = {"state": State.EXECUTE, "plasma_lit": True,
                                 "rod_temperature_c": HOT, "conditions": frozenset(conditions)}
    fields.update(changes)
    return compute(EnvelopeInputs(**fields), LINE)  # type: ignore[arg-type]


def assert_gases(env: Envelope, level: GasLimit) -> None:
    for name in (*PROCESS_GASES, *PRECURSORS):
        mfc = LINE.mfc(name)
        if level is GasLimit.OFF or (name in PRECURSORS and level < GasLimit.DEPOSIT):
            expected = 0.0
        elif level is GasLimit.PURGE:
            expected = mfc.purge_slpm
        else:
            expected = mfc.full_scale_slpm
        assert env.flow_max_slpm[name] == expected, name
    assert env.master_valve_allowed is (level >= GasLimit.PURGE)
    assert env.precursor_valve_allowed is (level is GasLimit.DEPOSIT)


def test_every_interlock_has_a_row() -> None:
    assert unknown_conditions() == set()
    assert set(STATE_LIMITS) == set(State)


@pytest.mark.parametrize("condition", sorted(CONDITION_LIMITS))
def test_each_condition_while_depositing_does_what_its_row_says(condition: str) -> None:
    row = CONDITION_LIMITS[condition]
    env = depositing(condition)
    assert env.rf_permitted is (row.rf is not RfLimit.OFF)
    assert env.max_power_kw == (LINE.rf().max_power_kw if row.rf is RfLimit.FULL else 0.0)
    assert_gases(env, row.gases)
    assert env.heaters_allowed is row.heaters
    for axis in ("spindle", *LINEAR_AXES):
        cfg = LINE.axis(axis)
        expected = {MotionLimit.STOPPED: 0.0,
                    MotionLimit.SETUP: cfg.max_speed * cfg.setup_speed_fraction,
                    MotionLimit.FULL: cfg.max_speed}[row.motion]
        assert env.axis_max_speed[axis] == pytest.approx(expected)
    assert env.fan_required is row.fan_required
    if row != CONDITION_LIMITS["link_gauge"]:
        assert env.reasons, "a limited actuator says why"


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_each_state_allows_what_its_row_says(state: State) -> None:
    row = STATE_LIMITS[state]
    env = compute(EnvelopeInputs(state=state, plasma_lit=True, rod_temperature_c=COLD), LINE)
    assert env.rf is row.rf
    assert_gases(env, row.gases)
    assert env.heaters_allowed is row.heaters


@pytest.mark.parametrize(("first", "second"),
                         list(itertools.combinations(sorted(CONDITION_LIMITS), 2)))
def test_conditions_combine_to_the_most_restrictive_of_each_column(first: str,
                                                                  second: str) -> None:
    a, b = CONDITION_LIMITS[first], CONDITION_LIMITS[second]
    env = depositing(first, second)
    assert env.rf is min(a.rf, b.rf)
    assert_gases(env, min(a.gases, b.gases))
    assert env.limits.motion is min(a.motion, b.motion)
    assert env.fan_required is (a.fan_required or b.fan_required)


def test_estop_and_gas_alarm_together_unpower_the_drives_and_close_the_master_valve() -> None:
    env = depositing("estop", "gas_detected")
    assert not env.master_valve_allowed
    assert all(speed == 0 for speed in env.axis_max_speed.values())
    assert env.fan_required
    assert env.spindle_min_rpm == 0  # no power: nothing can turn it


def test_a_worse_condition_during_a_purge_closes_every_gas() -> None:
    purging = depositing("water_flow_low", state=State.ABORTED, plasma_lit=False)
    assert purging.master_valve_allowed and purging.flow_max_slpm["mfc_n2"] > 0
    worse = depositing("water_flow_low", "gas_detected", state=State.ABORTED, plasma_lit=False)
    assert not worse.master_valve_allowed
    assert set(worse.flow_max_slpm.values()) == {0.0}


@pytest.mark.parametrize("condition", ["exhaust_lost", "scrubber_not_ready", "gas_detected",
                                       "o2_enrichment"])
def test_no_purge_where_it_would_vent_gas_into_the_room(condition: str) -> None:
    env = depositing(condition, state=State.ABORTED)
    assert not env.master_valve_allowed
    assert set(env.flow_max_slpm.values()) == {0.0}


def test_a_door_open_means_setup_speed_and_no_rf_whatever_the_plasma() -> None:
    env = compute(EnvelopeInputs(state=State.IDLE, mode=Mode.MAINTENANCE, doors_closed=False,
                                 rod_temperature_c=HOT, devices_under_test=frozenset({"rf"})),
                  LINE)
    assert not env.rf_permitted
    for axis in ("spindle", *LINEAR_AXES):
        cfg = LINE.axis(axis)
        assert env.axis_max_speed[axis] == pytest.approx(cfg.max_speed * cfg.setup_speed_fraction)
    assert env.spindle_min_rpm == cooling_speed_rpm(LINE) <= env.axis_max_speed["spindle"]


@pytest.mark.parametrize(("temperature", "must_turn"), [(HOT, True), (COLD, False),
                                                        (None, True)])
def test_the_spindle_turns_while_the_rod_is_hot_or_unknown(temperature: float | None,
                                                           must_turn: bool) -> None:
    env = compute(EnvelopeInputs(state=State.ABORTED, rod_temperature_c=temperature), LINE)
    assert (env.spindle_min_rpm > 0) is must_turn


def test_maintenance_lifts_only_the_device_under_test() -> None:
    idle = compute(EnvelopeInputs(mode=Mode.MAINTENANCE, rod_temperature_c=COLD), LINE)
    assert not idle.rf_permitted and idle.flow_max_slpm["mfc_sicl4"] == 0
    test = compute(EnvelopeInputs(mode=Mode.MAINTENANCE, rod_temperature_c=COLD,
                                  devices_under_test=frozenset({"mfc_sicl4"})), LINE)
    assert test.flow_max_slpm["mfc_sicl4"] == LINE.mfc("mfc_sicl4").full_scale_slpm
    assert test.precursor_valve_allowed
    assert test.flow_max_slpm["mfc_o2"] == LINE.mfc("mfc_o2").purge_slpm
    rf = compute(EnvelopeInputs(mode=Mode.MAINTENANCE, devices_under_test=frozenset({"rf"})),
                 LINE)
    assert rf.rf is RfLimit.TEST
    assert rf.max_power_kw == LINE.supervision.device_test_max_power_kw


def test_a_device_test_gets_nothing_the_conditions_forbid() -> None:
    env = compute(EnvelopeInputs(mode=Mode.MAINTENANCE, conditions=frozenset({"exhaust_lost"}),
                                 devices_under_test=frozenset({"mfc_sicl4"})), LINE)
    assert env.flow_max_slpm["mfc_sicl4"] == 0
    assert not env.master_valve_allowed and not env.precursor_valve_allowed


def test_no_precursor_without_plasma_in_production() -> None:
    env = depositing(plasma_lit=False)
    assert env.flow_max_slpm["mfc_sicl4"] == 0 and not env.precursor_valve_allowed
    assert env.flow_max_slpm["mfc_o2"] == LINE.mfc("mfc_o2").full_scale_slpm


def test_the_fan_must_run_while_the_master_valve_is_open() -> None:
    assert depositing(master_valve_open=True).fan_required
    assert not depositing(master_valve_open=False).fan_required


def test_docs_safety_md_prints_the_tables_as_the_data_has_them() -> None:
    text = table_doc.DOC.read_text()
    assert text == table_doc.updated_document(text), (
        "docs/safety.md differs from the envelope's data: run "
        "`python -m controller.safety.table_doc`")
    for interlock in INTERLOCKS:
        assert f"`{interlock.id}: {interlock.description}`" in text


def test_the_kept_envelope_is_the_fresh_one_whatever_changed() -> None:
    """compute keeps its last answer: every input it depends on must lead to a fresh one
    (each field changed in turn, then back), and the rod's temperature only through whether
    the rod is hot."""
    base = EnvelopeInputs(state=State.EXECUTE, plasma_lit=True, rod_temperature_c=HOT,
                          conditions=frozenset({"link_gauge"}))
    changes: list[dict[str, object]] = [
        {"state": State.ABORTING}, {"mode": Mode.MAINTENANCE}, {"plasma_lit": False},
        {"conditions": frozenset({"water_flow_low"})}, {"doors_closed": False},
        {"rod_temperature_c": COLD}, {"rod_temperature_c": None},
        {"devices_under_test": frozenset({"rf"}), "mode": Mode.MAINTENANCE},
        {"master_valve_open": True},
    ]
    assert {f.name for f in dataclasses.fields(EnvelopeInputs)} <= {
        name for change in changes for name in change}, "a field no change above exercises"
    for change in changes:
        changed = dataclasses.replace(base, **change)  # type: ignore[arg-type]
        for inputs in (base, changed, base):
            kept = compute(inputs, LINE)
            compute(EnvelopeInputs(state=State.IDLE), LINE)  # something else in between
            assert compute(inputs, LINE) == kept
            assert kept == compute(inputs, LINE.model_copy())  # a fresh computation
    warm = compute(dataclasses.replace(base, rod_temperature_c=HOT - 100), LINE)
    assert warm is compute(base, LINE)  # still hot: the same envelope, kept
