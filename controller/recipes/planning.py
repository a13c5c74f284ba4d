"""From a validated recipe to the executor's plan."""

from __future__ import annotations

from dataclasses import replace

from controller.config.line import LineConfig, cooling_speed_rpm
from controller.recipes import process_model
from controller.recipes.plan import (
    DEFAULT_TOLERANCES,
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
    power = getattr(step, "power_tolerance_kw", DEFAULT_TOLERANCES.power_kw)
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
        return DepositOp(_layers(step, line), stroke[0], stroke[1], tol, label)
    if isinstance(step, DwellStep):
        return DwellOp(step.duration_s, step.spindle_rpm, label)
    assert isinstance(step, CoolDownStep)
    cooling = step.spindle_rpm or cooling_speed_rpm(line)
    return CooldownOp(step.power_ramp_down_s, step.duration_s, step.ar_slpm, step.o2_slpm,
                      step.n2_slpm, cooling, tol, label)


def _layers(step: DepositStep, line: LineConfig) -> tuple[LayerOp, ...]:
    sicl4 = line.mfc("mfc_sicl4")
    return tuple(
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
            sicl4_slpm=sicl4.slpm_for(layer.sicl4_g_min) if layer.sicl4_g_min > 0 else 0.0,
            target_diameter_mm=layer.target_diameter_mm or 0.0,
            extra_passes_max=layer.extra_passes[1],
        )
        for i, layer in enumerate(step.layers)
    )


def _with_boundaries(steps: tuple[Op, ...], recipe: Recipe, line: LineConfig) -> tuple[Op, ...]:
    """Every layer's planned outer diameter: the recipe's own where it gives one, else the
    growth at the line's nominal efficiency, scaled between the given ones (and the recipe's
    target) in proportion to each layer's share of the glass."""
    deposits = [op for op in steps if isinstance(op, DepositOp)]
    layers = [layer for op in deposits for layer in op.layers]
    if not layers:
        return steps
    stroke = deposits[0].stroke_mm
    anchors = {i: layer.target_diameter_mm for i, layer in enumerate(layers)
               if layer.target_diameter_mm > 0}
    if recipe.target_diameter_mm is not None:
        anchors.setdefault(len(layers) - 1, recipe.target_diameter_mm)
    masses = [
        process_model.deposited_mass_g(
            line.supervision.nominal_efficiency, layer.sicl4_g_min,
            process_model.pass_duration_s(stroke, layer.traverse_mm_min)) * layer.passes
        for layer in layers
    ]
    diameters = process_model.interpolated_boundaries_mm(
        line.geometry.bait_rod_diameter_mm, masses, anchors, stroke)
    planned = iter(diameters)
    return tuple(
        replace(op, layers=tuple(replace(layer, target_diameter_mm=next(planned))
                                 for layer in op.layers))
        if isinstance(op, DepositOp) else op
        for op in steps
    )


def plan_from_recipe(recipe: Recipe, line: LineConfig) -> Plan:
    stroke = turning_points_mm(recipe, line)
    befores = [before for before, _ in plasma_states(recipe)]
    steps = tuple(_op(step, line, stroke) for step in recipe.steps)
    return Plan(
        name=recipe.name,
        version=recipe.version,
        steps=_with_boundaries(steps, recipe, line),
        target_diameter_mm=recipe.target_diameter_mm,
        lit_before=tuple(b.lit for b in befores),
        lit_by=tuple(b.lit_by for b in befores),
    )
