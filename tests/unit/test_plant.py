"""The simulated plant's physics, stepped directly (no clock, no devices, no I/O): ignition,
flame-out, rod heat-up and cool-down, and growth against the controller's process model."""

from __future__ import annotations

import math

import pytest

from controller.config.line import LineConfig, load_line_config
from controller.recipes.process_model import deposited_mass_g, grown_diameter_mm, pass_duration_s
from simulators.faults import FaultBoard
from simulators.plant import Plant

DT_S = 0.1
IGNITION_AR_SLPM = 30.0  # domain.md's nominal figures
IGNITION_KW = 12.0
RUN_KW = 50.0
RUN_O2_SLPM = 80.0
SICL4_G_MIN = 20.0
TRAVERSE_MM_MIN = 150.0
PASSES = 100
NOMINAL_GAP_MM = 30.0


@pytest.fixture
def line() -> LineConfig:
    return load_line_config()


@pytest.fixture
def faults() -> FaultBoard:
    return FaultBoard(wall=lambda: 0.0)  # fault expiry is not under test here


@pytest.fixture
def plant(line: LineConfig, faults: FaultBoard) -> Plant:
    return Plant.from_line(line, faults)


def run(plant: Plant, seconds: float, dt_s: float = DT_S) -> None:
    for _ in range(round(seconds / dt_s)):
        plant.step(dt_s)


def ignite(plant: Plant) -> None:
    plant.rf_on = True
    plant.rf_forward_kw = IGNITION_KW
    plant.gas_flow_slpm["mfc_ar"] = IGNITION_AR_SLPM
    plant.step(DT_S)
    assert plant.plasma_lit


def hold_gap(plant: Plant, gap_mm: float = NOMINAL_GAP_MM) -> None:
    """What the torch slide does pass by pass: keep the coil-to-surface gap constant."""
    plant.torch_slide_mm = gap_mm + plant.rod_diameter_mm / 2 - (
        plant.geometry.coil_to_axis_at_slide_zero_mm
    )


def run_conditions(plant: Plant) -> None:
    """Argon off, O2 on, full power, nominal SiCl4: the deposition of domain.md's table."""
    plant.gas_flow_slpm["mfc_ar"] = 0.0
    plant.gas_flow_slpm["mfc_o2"] = RUN_O2_SLPM
    plant.rf_forward_kw = RUN_KW
    plant.gas_flow_slpm["mfc_sicl4"] = plant.sicl4.slpm_for(SICL4_G_MIN)
    hold_gap(plant)


def one_pass(plant: Plant, forward: bool, dt_s: float) -> None:
    """The carriage crosses the stroke from one turning point to the other."""
    a, b = plant.geometry.turning_point_a_mm, plant.geometry.turning_point_b_mm
    start, end = (a, b) if forward else (b, a)
    duration = pass_duration_s(abs(b - a), TRAVERSE_MM_MIN)
    steps = round(duration / dt_s)
    for i in range(steps):
        plant.carriage_mm = start + (end - start) * (i + 0.5) / steps
        plant.step(dt_s)
    hold_gap(plant)


# -- ignition ----------------------------------------------------------------------------------
def test_ignites_with_argon_and_power(plant: Plant) -> None:
    ignite(plant)
    assert plant.flame_outs == 0


@pytest.mark.parametrize(
    ("rf_on", "power_kw", "argon_slpm", "rf_enable"),
    [
        (True, IGNITION_KW, 0.0, True),  # no argon
        (True, IGNITION_KW, 10.0, True),  # too little argon
        (True, 5.0, IGNITION_AR_SLPM, True),  # too little power
        (False, IGNITION_KW, IGNITION_AR_SLPM, True),  # RF off
        (True, IGNITION_KW, IGNITION_AR_SLPM, False),  # the safety relay withholds the enable
    ],
)
def test_no_ignition_without_argon_and_power(
    plant: Plant, rf_on: bool, power_kw: float, argon_slpm: float, rf_enable: bool
) -> None:
    plant.rf_on, plant.rf_forward_kw, plant.rf_enable = rf_on, power_kw, rf_enable
    plant.gas_flow_slpm["mfc_ar"] = argon_slpm
    run(plant, 5.0)
    assert not plant.plasma_lit


def test_argon_behind_a_closed_master_valve_does_not_ignite(plant: Plant) -> None:
    plant.master_valve_open = False
    plant.rf_on, plant.rf_forward_kw = True, IGNITION_KW
    plant.gas_flow_slpm["mfc_ar"] = IGNITION_AR_SLPM
    run(plant, 1.0)
    assert not plant.plasma_lit


def test_ignition_fails_with_probability_one_until_rf_is_cycled(plant: Plant) -> None:
    plant.config = plant.config.model_copy(update={"ignition_failure_probability": 1.0})
    plant.rf_on, plant.rf_forward_kw = True, IGNITION_KW
    plant.gas_flow_slpm["mfc_ar"] = IGNITION_AR_SLPM
    run(plant, 5.0)
    assert not plant.plasma_lit
    assert plant.ignition_failed
    plant.rf_on = False
    plant.step(DT_S)
    assert not plant.ignition_failed  # RF off re-arms the igniter
    plant.config = plant.config.model_copy(update={"ignition_failure_probability": 0.0})
    plant.rf_on = True
    plant.step(DT_S)
    assert plant.plasma_lit


def test_ignition_fail_fault_blocks_ignition(plant: Plant, faults: FaultBoard) -> None:
    faults.inject("rf", "ignition_fail")
    plant.rf_on, plant.rf_forward_kw = True, IGNITION_KW
    plant.gas_flow_slpm["mfc_ar"] = IGNITION_AR_SLPM
    run(plant, 1.0)
    assert not plant.plasma_lit


# -- flame-out ---------------------------------------------------------------------------------
@pytest.mark.parametrize("o2_slpm", [0.0, 10.0])
def test_flame_out_when_plasma_gas_drops(plant: Plant, o2_slpm: float) -> None:
    ignite(plant)
    run_conditions(plant)  # argon off: O2 alone carries the plasma
    run(plant, 1.0)
    assert plant.plasma_lit
    plant.gas_flow_slpm["mfc_o2"] = o2_slpm  # below the sustain flow
    plant.step(DT_S)
    assert not plant.plasma_lit
    assert plant.flame_outs == 1


def test_flame_out_when_the_master_valve_closes(plant: Plant) -> None:
    ignite(plant)
    run_conditions(plant)
    plant.master_valve_open = False  # the MFCs still say 80 slpm; nothing reaches the torch
    plant.step(DT_S)
    assert not plant.plasma_lit
    assert plant.flame_outs == 1


def test_flame_out_when_power_drops(plant: Plant) -> None:
    ignite(plant)
    plant.rf_forward_kw = plant.config.sustain_min_power_kw - 1
    plant.step(DT_S)
    assert not plant.plasma_lit
    assert plant.flame_outs == 1


def test_flame_out_fault(plant: Plant, faults: FaultBoard) -> None:
    ignite(plant)
    faults.inject("rf", "flame_out")
    plant.step(DT_S)
    assert not plant.plasma_lit
    assert plant.flame_outs == 1
    run(plant, 1.0)
    assert not plant.plasma_lit  # the fault also keeps it from re-lighting


def test_switching_rf_off_is_not_a_flame_out(plant: Plant) -> None:
    ignite(plant)
    plant.rf_on = False
    plant.step(DT_S)
    assert not plant.plasma_lit
    assert plant.flame_outs == 0


# -- rod temperature ---------------------------------------------------------------------------
def test_rod_heats_up_under_the_plasma(plant: Plant) -> None:
    cfg = plant.config
    tau = cfg.rod_heating_time_constant_s
    assert plant.rod_temperature_c == pytest.approx(cfg.ambient_c)
    ignite(plant)
    run_conditions(plant)
    run(plant, tau)
    rise = cfg.rod_temperature_lit_c - cfg.ambient_c
    assert plant.rod_temperature_c == pytest.approx(cfg.ambient_c + rise * 0.632, rel=0.02)
    run(plant, 5 * tau)
    assert plant.rod_temperature_c == pytest.approx(cfg.rod_temperature_lit_c, rel=0.01)


def minutes_to_cool(plant: Plant, below_c: float, dt_s: float = 1.0) -> float:
    seconds = 0.0
    while plant.rod_temperature_c >= below_c:
        plant.step(dt_s)
        seconds += dt_s
        assert seconds < 3 * 3600, "the rod never cooled"
    return seconds / 60


def test_a_preform_cools_by_radiation_and_convection_in_minutes(plant: Plant) -> None:
    """domain.md: a 30-50 mm preform takes of the order of 10-20 minutes to fall below 300 C."""
    plant.rod_diameter_mm = 47.0
    plant.rod_temperature_c = 1500.0
    temperatures = []
    for _ in range(20):
        run(plant, 60.0, dt_s=1.0)
        temperatures.append(plant.rod_temperature_c)
    assert temperatures == sorted(temperatures, reverse=True)
    assert temperatures[0] > 700  # radiation dominates: the first minute takes the most
    plant.rod_temperature_c = 1500.0
    assert 10 <= minutes_to_cool(plant, 300.0) <= 20
    run(plant, 4 * 3600.0, dt_s=10.0)
    assert plant.rod_temperature_c == pytest.approx(plant.config.ambient_c, abs=5.0)
    assert plant.rod_temperature_c >= plant.config.ambient_c  # never below the room


def test_a_thick_rod_cools_slower_than_a_thin_one(line: LineConfig, faults: FaultBoard) -> None:
    times = []
    for diameter in (30.0, 47.0):
        plant = Plant.from_line(line, faults)
        plant.rod_diameter_mm, plant.rod_temperature_c = diameter, 1500.0
        times.append(minutes_to_cool(plant, 300.0))
    thin, thick = times
    assert thick == pytest.approx(thin * 47 / 30, rel=0.02)  # heat capacity / surface ~ D


def test_cooling_is_the_same_at_any_step(line: LineConfig, faults: FaultBoard) -> None:
    ends = []
    for dt_s in (0.01, 0.1, 2.0, 30.0):
        plant = Plant.from_line(line, faults)
        plant.rod_diameter_mm, plant.rod_temperature_c = 47.0, 1500.0
        run(plant, 300.0, dt_s)
        ends.append(plant.rod_temperature_c)
    assert max(ends) - min(ends) < 0.5


def test_faster_cooling_figures_cool_faster(line: LineConfig, faults: FaultBoard) -> None:
    plant = Plant.from_line(line, faults)
    plant.config = plant.config.model_copy(update={"rod_convection_w_m2_k": 400.0})
    plant.rod_diameter_mm, plant.rod_temperature_c = 47.0, 1500.0
    assert minutes_to_cool(plant, 300.0) < 3


# -- growth ------------------------------------------------------------------------------------
def test_no_growth_without_plasma_or_off_the_rod(plant: Plant) -> None:
    plant.gas_flow_slpm["mfc_sicl4"] = 2.0
    run(plant, 10.0)  # no plasma
    ignite(plant)
    run_conditions(plant)
    plant.carriage_mm = 0.0  # parked, beyond turning point A
    run(plant, 10.0)
    assert plant.deposited_g == 0.0
    assert plant.rod_diameter_mm == pytest.approx(plant.geometry.bait_rod_diameter_mm)


def test_nominal_run_grows_as_the_process_model_predicts(plant: Plant) -> None:
    ignite(plant)
    run_conditions(plant)
    assert plant.coil_gap_mm == pytest.approx(NOMINAL_GAP_MM)
    assert plant.efficiency() == pytest.approx(plant.config.efficiency_nominal)
    dt_s = 2.0
    pass_s = pass_duration_s(
        abs(plant.geometry.turning_point_b_mm - plant.geometry.turning_point_a_mm),
        TRAVERSE_MM_MIN,
    )
    expected_mm = plant.geometry.bait_rod_diameter_mm
    for n in range(PASSES):
        one_pass(plant, forward=n % 2 == 0, dt_s=dt_s)
        expected_mm = grown_diameter_mm(
            expected_mm,
            deposited_mass_g(plant.config.efficiency_nominal, SICL4_G_MIN, pass_s),
            plant.config.deposition_length_mm,
            plant.config.silica_density_g_cm3,
        )
        assert 25 <= plant.coil_gap_mm <= 35  # the gap stays in its window all run
    assert plant.rod_diameter_mm == pytest.approx(expected_mm, rel=0.01)
    # domain.md: the nominal run grows a 30 mm rod to about 48 mm in about 6.7 hours.
    assert plant.process_time_s / 3600 == pytest.approx(6.7, abs=0.1)
    assert plant.rod_diameter_mm == pytest.approx(48, abs=1.0)


def travel(plant: Plant, start_mm: float, end_mm: float, dt_s: float = 1.0) -> None:
    """The carriage runs from start to end (both reached) at the traverse speed, then takes one
    step back: a reversal at ``end_mm``."""
    duration = pass_duration_s(abs(end_mm - start_mm), TRAVERSE_MM_MIN)
    steps = round(duration / dt_s)
    for i in range(1, steps + 1):
        plant.carriage_mm = start_mm + (end_mm - start_mm) * i / steps
        plant.step(dt_s)
    plant.carriage_mm = end_mm - math.copysign(0.1, end_mm - start_mm)
    plant.step(1e-6)


def test_glass_spreads_over_the_stroke_actually_run(plant: Plant) -> None:
    ignite(plant)
    run_conditions(plant)
    plant.carriage_mm = 300.0
    travel(plant, 300.0, 900.0)  # the first reversal: no stroke behind it to measure yet
    assert plant.deposition_span_mm == plant.config.deposition_length_mm
    density = plant.config.silica_density_g_cm3
    for start, end in ((900.0, 300.0), (300.0, 600.0), (600.0, 300.0), (300.0, 800.0)):
        before_mm, before_g = plant.rod_diameter_mm, plant.deposited_g
        travel(plant, start, end)
        grams = plant.deposited_g - before_g
        # The same speed and flow: the mass per stroke scales with its length ...
        assert grams == pytest.approx(
            deposited_mass_g(plant.efficiency(), SICL4_G_MIN,
                             pass_duration_s(abs(end - start), TRAVERSE_MM_MIN)),
            rel=0.01,
        )
        # ... and it lies over that length, as the controller's process model says.
        expected = grown_diameter_mm(before_mm, grams, abs(end - start), density)
        assert plant.rod_diameter_mm == pytest.approx(expected, rel=1e-4), (start, end)
        assert plant.deposition_span_mm == pytest.approx(abs(end - start), abs=0.2)
        hold_gap(plant)


def test_a_reversal_off_the_rod_counts_only_the_span_over_it(plant: Plant) -> None:
    ignite(plant)
    run_conditions(plant)
    plant.carriage_mm = 300.0
    travel(plant, 300.0, 900.0)
    travel(plant, 900.0, 100.0)  # on to 100 mm, past turning point A (300 mm)
    assert plant.deposition_span_mm == pytest.approx(600.0)
    travel(plant, 100.0, 320.0)  # a short stroke: the glass lands on 20 mm, floored
    assert plant.deposition_span_mm == plant.config.deposition_min_length_mm


def _deposited_over_one_pass(plant: Plant) -> float:
    ignite(plant)
    run_conditions(plant)
    one_pass(plant, forward=True, dt_s=1.0)
    return plant.deposited_g


@pytest.mark.parametrize("fraction", [-0.2, -0.5, 0.1])
def test_efficiency_drift_fault_scales_growth(
    line: LineConfig, faults: FaultBoard, fraction: float
) -> None:
    nominal = _deposited_over_one_pass(Plant.from_line(line, faults))
    faults.inject("plant", "efficiency_drift", params={"fraction": fraction})
    drifted = _deposited_over_one_pass(Plant.from_line(line, faults))
    assert nominal > 0
    assert drifted / nominal == pytest.approx(1 + fraction, rel=1e-6)


def test_efficiency_drift_setting_scales_growth(line: LineConfig, faults: FaultBoard) -> None:
    nominal = _deposited_over_one_pass(Plant.from_line(line, faults))
    plant = Plant.from_line(line, faults)
    plant.efficiency_drift = -0.25  # what the control channel's `set` changes
    assert _deposited_over_one_pass(plant) / nominal == pytest.approx(0.75, rel=1e-6)


@pytest.mark.parametrize(
    ("power_kw", "gap_mm"),
    [(RUN_KW, 45.0), (RUN_KW, 15.0), (20.0, NOMINAL_GAP_MM), (90.0, NOMINAL_GAP_MM)],
)
def test_efficiency_falls_outside_its_windows(
    plant: Plant, power_kw: float, gap_mm: float
) -> None:
    plant.rf_forward_kw = power_kw
    hold_gap(plant, gap_mm)
    assert plant.efficiency() < plant.config.efficiency_nominal


def test_room_o2_and_exhaust_fan_defaults(plant: Plant) -> None:
    assert plant.config.room_o2_pct == 20.9  # fresh air
    assert not plant.exhaust_fan_on  # the safety PLC drives it
    assert plant.snapshot()["exhaust_fan_on"] is False
