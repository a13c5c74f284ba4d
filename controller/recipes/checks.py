"""A recipe checked against the line's limits and the cross-field rules: every finding at once,
each with its field path and its reason (never a traceback). Pure: no device is touched."""

from __future__ import annotations

from collections.abc import Iterator

from controller.config.line import LineConfig
from controller.recipes import process_model
from controller.recipes.authority import layer_authority
from controller.recipes.planning import plan_from_recipe
from controller.recipes.recipe import (
    GAS_FIELDS,
    CoolDownStep,
    DepositStep,
    DwellStep,
    Finding,
    IgniteStep,
    Layer,
    Loc,
    PlasmaState,
    PurgeStep,
    RampStep,
    Recipe,
    RecipeIssue,
    Step,
    format_loc,
    num,
    plasma_states,
    sicl4_full_scale_g_min,
    turning_points_mm,
)

# --------------------------------------------------------------------------------------------
# Limit checks: one generator per concern, each yielding (field path, reason)


def _check_power(loc: Loc, power_kw: float, line: LineConfig) -> Iterator[Finding]:
    max_kw = line.rf().max_power_kw
    if power_kw > max_kw:
        yield (
            (*loc, "power_kw"),
            f"{num(power_kw)} kW exceeds the RF generator's maximum ({num(max_kw)} kW)",
        )


def _check_gases(loc: Loc, flows: dict[str, float], line: LineConfig) -> Iterator[Finding]:
    for field, flow in flows.items():
        mfc = line.mfc(GAS_FIELDS[field])
        if flow > mfc.full_scale_slpm:
            yield (
                (*loc, field),
                f"{num(flow)} slpm exceeds the {mfc.gas} MFC's full scale "
                f"({num(mfc.full_scale_slpm)} slpm)",
            )


def _check_spindle(loc: Loc, rpm: float | None, line: LineConfig) -> Iterator[Finding]:
    max_rpm = line.axis("spindle").max_speed
    if rpm is not None and rpm > max_rpm:
        yield (
            (*loc, "spindle_rpm"),
            f"{num(rpm)} rpm exceeds the spindle's maximum ({num(max_rpm)} rpm)",
        )


def _step_flows(step: PurgeStep | IgniteStep | RampStep | CoolDownStep) -> dict[str, float]:
    return {"ar_slpm": step.ar_slpm, "o2_slpm": step.o2_slpm, "n2_slpm": step.n2_slpm}


def _check_step_limits(index: int, step: Step, line: LineConfig) -> Iterator[Finding]:
    loc: Loc = ("steps", index)
    match step:
        case IgniteStep() | RampStep():
            yield from _check_power(loc, step.power_kw, line)
            yield from _check_gases(loc, _step_flows(step), line)
            yield from _check_spindle(loc, step.spindle_rpm, line)
        case PurgeStep():
            yield from _check_gases(loc, _step_flows(step), line)
            yield from _check_spindle(loc, step.spindle_rpm, line)
        case CoolDownStep():
            yield from _check_gases(loc, _step_flows(step), line)
            yield from _check_cooling_spindle(loc, step, line)
        case DwellStep():
            yield from _check_spindle(loc, step.spindle_rpm, line)
        case DepositStep():
            for j, layer in enumerate(step.layers):
                yield from _check_layer_limits((*loc, "layers", j), layer, line)


def _check_cooling_spindle(loc: Loc, step: CoolDownStep, line: LineConfig) -> Iterator[Finding]:
    if step.spindle_rpm is None and line.axis("spindle").cooling_speed_rpm is None:
        yield (
            (*loc, "spindle_rpm"),
            "unset, and the line configures no spindle cooling speed: the rod must turn "
            "while it cools",
        )
    yield from _check_spindle(loc, step.spindle_rpm, line)


def _check_layer_limits(loc: Loc, layer: Layer, line: LineConfig) -> Iterator[Finding]:
    yield from _check_power(loc, layer.power_kw, line)
    yield from _check_power_trim(loc, layer, line)
    flows = {"ar_slpm": layer.ar_slpm, "o2_slpm": layer.o2_slpm, "n2_slpm": layer.n2_slpm}
    yield from _check_gases(loc, flows, line)
    yield from _check_sicl4(loc, layer, line)
    yield from _check_dopant_flow(loc, layer, line)
    yield from _check_spindle(loc, layer.spindle_rpm, line)
    yield from _check_traverse(loc, layer, line)


def _check_power_trim(loc: Loc, layer: Layer, line: LineConfig) -> Iterator[Finding]:
    low, high = layer.power_trim_kw
    max_kw = line.rf().max_power_kw
    if layer.power_kw <= max_kw < layer.power_kw + high:
        yield (
            (*loc, "power_trim_kw"),
            f"{num(layer.power_kw)} kW plus a trim of +{num(high)} kW exceeds the RF "
            f"generator's maximum ({num(max_kw)} kW)",
        )
    if layer.power_kw + low <= 0:
        yield (
            (*loc, "power_trim_kw"),
            f"{num(layer.power_kw)} kW with a trim of {num(low)} kW would put the plasma out",
        )


def _check_sicl4(loc: Loc, layer: Layer, line: LineConfig) -> Iterator[Finding]:
    mfc = line.mfc("mfc_sicl4")
    full_scale = sicl4_full_scale_g_min(mfc)
    if full_scale is None:
        if layer.sicl4_g_min > 0:
            yield (
                (*loc, "sicl4_g_min"),
                "the line's SiCl4 MFC has no grams_per_min_per_slpm to convert g/min",
            )
        return
    if layer.sicl4_g_min > full_scale:
        yield (
            (*loc, "sicl4_g_min"),
            f"{num(layer.sicl4_g_min)} g/min exceeds the SiCl4 MFC's full scale "
            f"({num(full_scale)} g/min)",
        )
        return
    trimmed = layer.sicl4_g_min * (1 + layer.sicl4_trim_pct[1] / 100)
    if trimmed > full_scale:
        yield (
            (*loc, "sicl4_trim_pct"),
            f"{num(layer.sicl4_g_min)} g/min trimmed by +{num(layer.sicl4_trim_pct[1])} % "
            f"({num(trimmed)} g/min) exceeds the SiCl4 MFC's full scale "
            f"({num(full_scale)} g/min)",
        )


def _check_dopant_flow(loc: Loc, layer: Layer, line: LineConfig) -> Iterator[Finding]:
    mfc = line.mfc("mfc_dopant")
    if layer.dopant_slpm > mfc.full_scale_slpm:
        yield (
            (*loc, "dopant_slpm"),
            f"{num(layer.dopant_slpm)} slpm exceeds the {mfc.gas} MFC's full scale "
            f"({num(mfc.full_scale_slpm)} slpm)",
        )


def _check_traverse(loc: Loc, layer: Layer, line: LineConfig) -> Iterator[Finding]:
    max_mm_min = line.axis("carriage").max_speed
    if layer.traverse_mm_min > max_mm_min:
        yield (
            (*loc, "traverse_mm_min"),
            f"{num(layer.traverse_mm_min)} mm/min exceeds the carriage's maximum speed "
            f"({num(max_mm_min)} mm/min)",
        )
        return
    trimmed = layer.traverse_mm_min * (1 + layer.traverse_trim_pct[1] / 100)
    if trimmed > max_mm_min:
        yield (
            (*loc, "traverse_trim_pct"),
            f"{num(layer.traverse_mm_min)} mm/min trimmed by +{num(layer.traverse_trim_pct[1])} "
            f"% ({num(trimmed)} mm/min) exceeds the carriage's maximum speed "
            f"({num(max_mm_min)} mm/min)",
        )


# --------------------------------------------------------------------------------------------
# Recipe-wide checks: dopant gas, stroke, geometry, target


def _check_dopant_gas(recipe: Recipe, line: LineConfig) -> Iterator[Finding]:
    line_gas = line.mfc("mfc_dopant").gas
    if recipe.dopant_gas is not None and recipe.dopant_gas.casefold() != line_gas.casefold():
        yield (
            ("dopant_gas",),
            f"{recipe.dopant_gas} does not match the line's dopant MFC gas ({line_gas})",
        )


def _check_stroke(recipe: Recipe, line: LineConfig) -> Iterator[Finding]:
    carriage = line.axis("carriage")
    low, high = carriage.min_position_mm, carriage.max_position_mm
    travel = f"the carriage's travel ({num(low)}-{num(high)} mm)"
    a, b = turning_points_mm(recipe, line)
    for name, position in (("a", a), ("b", b)):
        if low <= position <= high:
            continue
        if recipe.stroke is not None:
            yield (
                ("stroke", f"turning_point_{name}_mm"),
                f"{num(position)} mm lies outside {travel}",
            )
        else:
            yield (
                ("stroke",),
                f"the line's turning point {name.upper()} ({num(position)} mm) lies outside "
                f"{travel}",
            )
    if recipe.stroke is None and b <= a:
        yield (("stroke",), "the line's turning point B does not exceed turning point A")


def _check_coil_gaps(recipe: Recipe, line: LineConfig) -> Iterator[Finding]:
    """The torch slide must reach each layer's gap on the bait rod and on the final preform."""
    slide = line.axis("torch_slide")
    geometry = line.geometry
    diameters = [geometry.bait_rod_diameter_mm]
    if recipe.target_diameter_mm is not None:
        diameters.append(recipe.target_diameter_mm)
    for i, step in recipe.deposit_steps():
        for j, layer in enumerate(step.layers):
            for diameter in diameters:
                position = layer.coil_gap_mm + diameter / 2 - geometry.coil_to_axis_at_slide_zero_mm
                if slide.min_position_mm <= position <= slide.max_position_mm:
                    continue
                yield (
                    ("steps", i, "layers", j, "coil_gap_mm"),
                    f"a {num(layer.coil_gap_mm)} mm gap on a {num(diameter)} mm rod needs the "
                    f"torch slide at {num(position)} mm, outside its travel "
                    f"({num(slide.min_position_mm)}-{num(slide.max_position_mm)} mm)",
                )
                break


def _check_target(recipe: Recipe, line: LineConfig) -> Iterator[Finding]:
    gauge = line.gauge()
    # A layer's boundary past the gauge cannot be measured (and 1e300 mm overflowed the plan).
    for i, step in recipe.deposit_steps():
        for k, layer in enumerate(step.layers):
            if layer.target_diameter_mm is not None and layer.target_diameter_mm > gauge.max_mm:
                yield (
                    ("steps", i, "layers", k, "target_diameter_mm"),
                    f"{num(layer.target_diameter_mm)} mm exceeds the diameter gauge's range "
                    f"({num(gauge.min_mm)}-{num(gauge.max_mm)} mm)",
                )
    target = recipe.target_diameter_mm
    if target is None:
        return
    bait = line.geometry.bait_rod_diameter_mm
    if target <= bait:
        yield (
            ("target_diameter_mm",),
            f"{num(target)} mm does not exceed the bait rod's diameter ({num(bait)} mm)",
        )
    elif target > gauge.max_mm:
        yield (
            ("target_diameter_mm",),
            f"{num(target)} mm exceeds the diameter gauge's range "
            f"({num(gauge.min_mm)}-{num(gauge.max_mm)} mm)",
        )


# --------------------------------------------------------------------------------------------
# Cross-field rules: the order of steps and what each needs from the steps before it


def _check_sequence(recipe: Recipe, line: LineConfig) -> Iterator[Finding]:
    states = plasma_states(recipe)
    for index, (step, (before, _)) in enumerate(zip(recipe.steps, states, strict=True)):
        yield from _check_step_order(index, step, before, recipe, line)
    yield from _check_ending(recipe, states[-1][1])


def _lit_since(before: PlasmaState) -> str:
    return f"the plasma is lit (since steps[{before.lit_by}])"


def _check_step_order(
    index: int, step: Step, before: PlasmaState, recipe: Recipe, line: LineConfig
) -> Iterator[Finding]:
    loc: Loc = ("steps", index)
    max_slew = line.rf().max_slew_kw_s
    match step:
        case PurgeStep() if before.lit:
            yield (
                loc,
                f"a purge runs with the RF off but {_lit_since(before)}: purge before "
                "ignite or after cool_down",
            )
        case IgniteStep() if before.lit:
            yield loc, f"{_lit_since(before)} already: one ignite per plasma"
        case RampStep():
            if step.power_kw > 0 and not before.lit:
                yield (
                    (*loc, "power_kw"),
                    f"ramping to {num(step.power_kw)} kW needs a lit plasma: no ignite step "
                    "before it",
                )
            elif before.lit:
                yield from _check_slew(
                    (*loc, "duration_s"), before.power_kw, step.power_kw, step.duration_s, max_slew
                )
        case DepositStep():
            if not before.lit:
                yield loc, "deposit needs a lit plasma: no ignite step before it"
            for j, layer in enumerate(step.layers):
                yield from _check_layer_rules((*loc, "layers", j), layer, before, recipe, line)
        case CoolDownStep() if before.lit:
            yield from _check_slew(
                (*loc, "power_ramp_down_s"), before.power_kw, 0.0, step.power_ramp_down_s, max_slew
            )
        case _:
            pass


def _check_slew(
    loc: Loc, from_kw: float, to_kw: float, duration_s: float, max_slew_kw_s: float
) -> Iterator[Finding]:
    slope = abs(to_kw - from_kw) / duration_s
    if slope > max_slew_kw_s:
        needed = abs(to_kw - from_kw) / max_slew_kw_s
        yield (
            loc,
            f"{num(from_kw)} -> {num(to_kw)} kW in {num(duration_s)} s is "
            f"{num(slope)} kW/s, beyond the RF generator's slew limit "
            f"({num(max_slew_kw_s)} kW/s): allow at least {num(needed)} s",
        )


def _check_layer_rules(
    loc: Loc, layer: Layer, before: PlasmaState, recipe: Recipe, line: LineConfig
) -> Iterator[Finding]:
    if layer.sicl4_g_min > 0 and not before.lit:
        yield (*loc, "sicl4_g_min"), "SiCl4 without a lit plasma: no ignite step before it"
    if layer.dopant_slpm > 0 and layer.sicl4_g_min == 0:
        yield (*loc, "dopant_slpm"), "a dopant flows only with SiCl4 (sicl4_g_min is 0)"
    if layer.dopant_slpm > 0 and recipe.dopant_gas is None:
        yield (
            (*loc, "dopant_slpm"),
            f"a dopant flow needs the recipe's dopant_gas (the line's dopant MFC holds "
            f"{line.mfc('mfc_dopant').gas})",
        )
    yield from _check_oxygen(loc, layer, line)


def _check_oxygen(loc: Loc, layer: Layer, line: LineConfig) -> Iterator[Finding]:
    """SiCl4 + O2 -> SiO2 + 2 Cl2: at least one mole of O2 per mole of SiCl4."""
    if layer.sicl4_g_min == 0:
        return
    mfc = line.mfc("mfc_sicl4")
    if mfc.grams_per_min_per_slpm is None:
        return  # reported by the SiCl4 limit check
    needed = mfc.slpm_for(layer.sicl4_g_min) * process_model.O2_SLPM_PER_SICL4_SLPM
    if layer.o2_slpm < needed:
        yield (
            (*loc, "o2_slpm"),
            f"{num(layer.o2_slpm)} slpm of O2 cannot oxidise {num(layer.sicl4_g_min)} g/min of "
            f"SiCl4 (SiCl4 + O2 -> SiO2 + 2 Cl2 needs at least {num(needed)} slpm)",
        )


def _check_ending(recipe: Recipe, final: PlasmaState) -> Iterator[Finding]:
    deposits = [i for i, _ in recipe.deposit_steps()]
    cool_downs = [i for i, s in enumerate(recipe.steps) if isinstance(s, CoolDownStep)]
    if deposits and not any(c > deposits[-1] for c in cool_downs):
        yield (
            ("steps",),
            f"no cool_down step after the last deposit (steps[{deposits[-1]}]): the rod must "
            "cool while it turns",
        )
    elif final.lit:
        yield ("steps",), "the recipe ends with the plasma lit: end with a cool_down step"


def _check_boundaries(recipe: Recipe, line: LineConfig) -> Iterator[Finding]:
    """Each layer's planned boundary reachable at the nominal efficiency within the layer's
    authority: the recipe must not plan what its own trims cannot make."""
    plan = plan_from_recipe(recipe, line)
    diameter = line.geometry.bait_rod_diameter_mm
    efficiency = line.supervision.nominal_efficiency
    for (i, _), op in zip(recipe.deposit_steps(), plan.deposit_steps, strict=True):
        for k, layer in enumerate(op.layers):
            loc: Loc = ("steps", i, "layers", k)
            target = layer.target_diameter_mm
            if target <= diameter:
                yield ((*loc, "target_diameter_mm"),
                       f"{num(round(target, 3))} mm does not exceed the diameter before this "
                       f"layer ({num(round(diameter, 3))} mm)")
                return
            nominal = layer.passes * process_model.deposited_mass_g(
                efficiency, layer.sicl4_g_min,
                process_model.pass_duration_s(op.stroke_mm, layer.traverse_mm_min))
            needed = process_model.mass_for_diameter_g(diameter, target, op.stroke_mm)
            low, high = layer_authority(layer, line).mass_factor_range
            wanted = needed / nominal if nominal > 0 else float("inf")
            if not low * (1 - 1e-9) <= wanted <= high * (1 + 1e-9):
                yield (loc,
                       f"its boundary at {num(round(target, 3))} mm needs {wanted:.2f}x the "
                       f"layer's glass at the nominal efficiency {num(efficiency)}; its trims "
                       f"(sicl4_trim_pct, traverse_trim_pct) allow {low:.2f}-{high:.2f}x: "
                       "widen them, change its passes or flows, or move the boundary "
                       "(target_diameter_mm)")
            diameter = target


def check_recipe(recipe: Recipe, line: LineConfig) -> list[RecipeIssue]:
    """Every limit and cross-field error of a structurally valid recipe (empty: valid)."""
    findings: list[Finding] = []
    for index, step in enumerate(recipe.steps):
        findings.extend(_check_step_limits(index, step, line))
    for check in (
        _check_dopant_gas,
        _check_stroke,
        _check_coil_gaps,
        _check_target,
        _check_sequence,
    ):
        findings.extend(check(recipe, line))
    if not findings:  # the plan is only meaningful for an otherwise valid recipe
        findings.extend(_check_boundaries(recipe, line))
    return [RecipeIssue(format_loc(loc), reason) for loc, reason in findings]
