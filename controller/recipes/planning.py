"""From a validated recipe to the executor's plan."""

from __future__ import annotations

from controller.config.line import LineConfig, cooling_speed_rpm
from controller.recipes.plan import (
    CooldownOp,
    DepositOp,
    DwellOp,
    IgniteOp,
    LayerOp,
    Op,
    Plan,
    PurgeOp,
    RampOp,
    Tolerances,
)
from controller.recipes.recipe import (
    CoolDownStep,
    DepositStep,
    DwellStep,
    IgniteStep,
    PurgeStep,
    RampStep,
    Recipe,
    Step,
    plasma_states,
    turning_points_mm,
)


def _tolerances(step: Step) -> Tolerances:
    power = getattr(step, "power_tolerance_kw", 2.0)
    return Tolerances(flow_pct=step.flow_tolerance_pct, power_kw=power,
                      settle_s=step.settle_timeout_s)


def _op(step: Step, line: LineConfig, stroke: tuple[float, float]) -> Op:
    tol = _tolerances(step)
    label = step.label or ""
    if isinstance(step, PurgeStep):
        return PurgeOp(step.duration_s, step.ar_slpm, step.o2_slpm, step.n2_slpm,
                       step.spindle_rpm, tol, label)
    if isinstance(step, IgniteStep):
        return IgniteOp(step.ar_slpm, step.o2_slpm, step.n2_slpm, step.power_kw,
                        step.spindle_rpm, step.timeout_s, step.attempts,
                        line.rf().max_slew_kw_s, tol, step.expected_duration_s, label)
    if isinstance(step, RampStep):
        return RampOp(step.duration_s, step.power_kw, step.ar_slpm, step.o2_slpm, step.n2_slpm,
                      step.spindle_rpm, tol, label)
    if isinstance(step, DepositStep):
        layers = tuple(
            LayerOp(
                name=layer.label or f"layer {i + 1}", passes=layer.passes,
                power_kw=layer.power_kw, ar_slpm=layer.ar_slpm, o2_slpm=layer.o2_slpm,
                n2_slpm=layer.n2_slpm, sicl4_g_min=layer.sicl4_g_min,
                dopant_slpm=layer.dopant_slpm, traverse_mm_min=layer.traverse_mm_min,
                spindle_rpm=layer.spindle_rpm, heaters=layer.turning_point_heaters,
                coil_gap_mm=layer.coil_gap_mm,
                power_trim_kw=(layer.power_trim_kw[0], layer.power_trim_kw[1]),
                traverse_trim_pct=(layer.traverse_trim_pct[0], layer.traverse_trim_pct[1]),
                sicl4_trim_pct=(layer.sicl4_trim_pct[0], layer.sicl4_trim_pct[1]),
            )
            for i, layer in enumerate(step.layers)
        )
        return DepositOp(layers, stroke[0], stroke[1], tol, label)
    if isinstance(step, DwellStep):
        return DwellOp(step.duration_s, step.spindle_rpm, label)
    assert isinstance(step, CoolDownStep)
    cooling = step.spindle_rpm or cooling_speed_rpm(line)
    return CooldownOp(step.power_ramp_down_s, step.duration_s, step.ar_slpm, step.o2_slpm,
                      step.n2_slpm, cooling, tol, label)


def plan_from_recipe(recipe: Recipe, line: LineConfig) -> Plan:
    stroke = turning_points_mm(recipe, line)
    befores = [before for before, _ in plasma_states(recipe)]
    return Plan(
        name=recipe.name,
        version=recipe.version,
        steps=tuple(_op(step, line, stroke) for step in recipe.steps),
        target_diameter_mm=recipe.target_diameter_mm,
        lit_before=tuple(b.lit for b in befores),
        lit_by=tuple(b.lit_by for b in befores),
    )
