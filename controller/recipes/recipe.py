"""Recipes: the pydantic models of a recipe file, its validation against the machine's limits
and the cross-field rules, and the error report an operator reads.

A recipe is data (style.md principle 6): the executor interprets it. Everything here is pure:
no device is touched, so an invalid recipe is refused before anything moves. Every error is
reported at once with its field path (``steps[3].layers[1].sicl4_g_min``), never a traceback.
Every machine figure comes from the line configuration (``controller.config.line.LineConfig``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from controller.config.line import LineConfig, MfcConfig

Loc = tuple[str | int, ...]
Finding = tuple[Loc, str]

STEP_KINDS = ("purge", "ignite", "ramp", "deposit", "dwell", "cool_down")
# Which MFC of the line each gas field of a recipe sets.
GAS_FIELDS = {"ar_slpm": "mfc_ar", "o2_slpm": "mfc_o2", "n2_slpm": "mfc_n2"}
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class RecipeIssue:
    """One thing wrong with a recipe: where (a field path) and why."""

    field: str
    reason: str
    line: int | None = None  # 1-based line in the recipe file, when it can be located

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "reason": self.reason, "line": self.line}


class RecipeError(Exception):
    """A recipe refused: the file and every issue found, not only the first."""

    def __init__(self, path: Path, errors: list[RecipeIssue]) -> None:
        super().__init__(f"{path}: {len(errors)} error(s) in recipe")
        self.path = path
        self.errors = errors

    def to_json(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "valid": False,
            "errors": [issue.to_json() for issue in self.errors],
        }


def format_recipe_error(err: RecipeError) -> str:
    """One line per issue: ``recipes/x.yaml: steps[3].sicl4_g_min: reason``."""
    lines = []
    for issue in err.errors:
        where = f"{issue.field}: " if issue.field else ""
        lines.append(f"{err.path}: {where}{issue.reason}")
    return "\n".join(lines)


def format_loc(loc: Loc) -> str:
    """('steps', 3, 'layers', 1, 'x') -> 'steps[3].layers[1].x'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _num(value: float) -> str:
    """A figure as an operator writes it: 75.8, not 75.80000000000001."""
    return f"{round(value, 3):g}"


# --------------------------------------------------------------------------------------------
# Models


class _Strict(BaseModel):
    # extra="forbid": a misspelt field must never be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _trim_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    low, high = bounds
    if not low <= 0 <= high:
        raise ValueError(
            f"trim bounds must be [low <= 0, high >= 0], got [{_num(low)}, {_num(high)}]"
        )
    return bounds


def _pct_trim_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    _trim_bounds(bounds)
    if bounds[0] <= -100:
        raise ValueError("a percentage trim cannot take a setpoint to zero or below (low > -100)")
    return bounds


TrimKw = Annotated[tuple[float, float], AfterValidator(_trim_bounds)]
TrimPct = Annotated[tuple[float, float], AfterValidator(_pct_trim_bounds)]


class Stroke(_Strict):
    """Turning points overriding the line geometry's, in carriage coordinates."""

    turning_point_a_mm: float = Field(description="turning point A (carriage position, mm)")
    turning_point_b_mm: float = Field(description="turning point B (carriage position, mm)")

    @model_validator(mode="after")
    def _a_before_b(self) -> Stroke:
        if self.turning_point_b_mm <= self.turning_point_a_mm:
            raise ValueError("turning_point_b_mm must exceed turning_point_a_mm")
        return self

    @property
    def length_mm(self) -> float:
        return self.turning_point_b_mm - self.turning_point_a_mm


class _StepBase(_Strict):
    label: str | None = Field(default=None, description="a name shown to the operator")
    flow_tolerance_pct: float = Field(
        default=5.0, gt=0, le=100, description="allowed flow deviation, % of each MFC's full scale"
    )
    settle_timeout_s: float = Field(
        default=30.0, gt=0, description="time allowed to reach the setpoints before the step fails"
    )


class _PoweredStep(_StepBase):
    power_tolerance_kw: float = Field(
        default=2.0, gt=0, description="allowed forward-power deviation from setpoint"
    )


class PurgeStep(_StepBase):
    """Flow gases with the RF off: before ignition, or after cool-down."""

    step: Literal["purge"]
    duration_s: float = Field(gt=0)
    ar_slpm: float = Field(default=0.0, ge=0)
    o2_slpm: float = Field(default=0.0, ge=0)
    n2_slpm: float = Field(default=0.0, ge=0)
    spindle_rpm: float = Field(default=0.0, ge=0)


class IgniteStep(_PoweredStep):
    """Light the plasma in argon at low power."""

    step: Literal["ignite"]
    power_kw: float = Field(gt=0, description="ignition power")
    ar_slpm: float = Field(gt=0, description="argon, the ignition gas")
    o2_slpm: float = Field(default=0.0, ge=0)
    n2_slpm: float = Field(default=0.0, ge=0, description="N2 screen gas")
    spindle_rpm: float = Field(gt=0, description="the rod turns before the plasma heats it")
    timeout_s: float = Field(gt=0, description="wait this long for plasma-lit, per attempt")
    attempts: int = Field(default=3, ge=1, le=10)
    expected_duration_s: float = Field(
        default=10.0, gt=0, description="typical time to light, for the forecast"
    )

    @model_validator(mode="after")
    def _expected_within_timeout(self) -> IgniteStep:
        if self.expected_duration_s > self.timeout_s:
            raise ValueError("expected_duration_s exceeds timeout_s")
        return self


class RampStep(_PoweredStep):
    """Move power and gases linearly from the previous step's values to these over duration_s."""

    step: Literal["ramp"]
    duration_s: float = Field(gt=0)
    power_kw: float = Field(ge=0, description="power at the end of the ramp (0: plasma off)")
    ar_slpm: float = Field(default=0.0, ge=0)
    o2_slpm: float = Field(default=0.0, ge=0)
    n2_slpm: float = Field(default=0.0, ge=0)
    spindle_rpm: float | None = Field(default=None, gt=0, description="unset: keep the speed")


class Layer(_Strict):
    """A group of passes with the same setpoints; the layers make the doping profile."""

    label: str | None = None
    passes: int = Field(ge=1, description="strokes A->B or B->A")
    power_kw: float = Field(gt=0)
    o2_slpm: float = Field(ge=0, description="O2 plasma gas, also oxidises the SiCl4")
    n2_slpm: float = Field(default=0.0, ge=0, description="N2 screen gas")
    ar_slpm: float = Field(default=0.0, ge=0)
    sicl4_g_min: float = Field(ge=0, description="SiCl4 vapour mass flow")
    dopant_slpm: float = Field(
        default=0.0, ge=0, description="dopant gas (the recipe's dopant_gas)"
    )
    traverse_mm_min: float = Field(gt=0, description="carriage speed along the rod")
    spindle_rpm: float = Field(gt=0)
    turning_point_heaters: bool = Field(
        default=False, description="fire each turning point's heater while the torch is away"
    )
    coil_gap_mm: float = Field(gt=0, description="coil-to-surface gap held by the torch slide")
    power_trim_kw: TrimKw = Field(default=(0.0, 0.0), description="[low, high] operator trim")
    traverse_trim_pct: TrimPct = Field(default=(0.0, 0.0), description="[low, high] in %")
    sicl4_trim_pct: TrimPct = Field(default=(0.0, 0.0), description="[low, high] in %")


class DepositStep(_PoweredStep):
    """Deposit glass: the layers in order, pass after pass between the turning points."""

    step: Literal["deposit"]
    layers: tuple[Layer, ...] = Field(min_length=1)
    coil_gap_tolerance_mm: float = Field(default=2.0, gt=0)


class DwellStep(_StepBase):
    """Hold the previous step's power and gases for a time, precursors off."""

    step: Literal["dwell"]
    duration_s: float = Field(gt=0)
    spindle_rpm: float | None = Field(default=None, gt=0, description="unset: keep the speed")


class CoolDownStep(_StepBase):
    """Power down, RF off, purge gases on, the rod cooling while it turns."""

    step: Literal["cool_down"]
    power_ramp_down_s: float = Field(default=30.0, gt=0, description="power to zero over this")
    duration_s: float = Field(gt=0, description="cooling time after RF off")
    ar_slpm: float = Field(default=0.0, ge=0)
    o2_slpm: float = Field(default=0.0, ge=0)
    n2_slpm: float = Field(default=0.0, ge=0)
    spindle_rpm: float | None = Field(
        default=None, gt=0, description="unset: the line's spindle cooling speed"
    )


Step = Annotated[
    PurgeStep | IgniteStep | RampStep | DepositStep | DwellStep | CoolDownStep,
    Field(discriminator="step"),
]


class Recipe(_Strict):
    """A recipe file: name, version, optional target and its steps in order."""

    name: str = Field(min_length=1, max_length=100)
    version: int = Field(ge=1)
    description: str | None = None
    dopant_gas: str | None = Field(
        default=None, min_length=1, description="must be the gas of the line's dopant MFC"
    )
    target_diameter_mm: float | None = Field(
        default=None, gt=0, description="final preform diameter; the controller corrects to it"
    )
    stroke: Stroke | None = Field(default=None, description="unset: the line's turning points")
    steps: tuple[Step, ...] = Field(min_length=1)

    _text: str = PrivateAttr(default="")
    _path: Path | None = PrivateAttr(default=None)

    @property
    def text(self) -> str:
        """The recipe file's text as loaded (recorded in the run header)."""
        return self._text

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def sha256(self) -> str:
        return recipe_hash(self._text)

    def deposit_steps(self) -> list[tuple[int, DepositStep]]:
        return [(i, s) for i, s in enumerate(self.steps) if isinstance(s, DepositStep)]

    def total_passes(self) -> int:
        return sum(layer.passes for _, step in self.deposit_steps() for layer in step.layers)


def recipe_hash(text: str) -> str:
    """SHA-256 of the recipe text (hex), recorded with the text in the run header."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def recipe_json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe file, for editors (yaml-language-server and the like)."""
    schema = Recipe.model_json_schema()
    return {"$schema": SCHEMA_DIALECT, "title": "POVD recipe", **schema}


# --------------------------------------------------------------------------------------------
# Derived values shared by the checks, the forecast and the executor


@dataclass(frozen=True)
class PlasmaState:
    """Power and gases after a step, as the sequence of steps leaves them."""

    lit: bool = False
    lit_by: int | None = None  # index of the igniting step
    power_kw: float = 0.0
    ar_slpm: float = 0.0
    o2_slpm: float = 0.0
    n2_slpm: float = 0.0

    def flows(self) -> dict[str, float]:
        return {"ar_slpm": self.ar_slpm, "o2_slpm": self.o2_slpm, "n2_slpm": self.n2_slpm}


def state_after(step: Step, index: int, before: PlasmaState) -> PlasmaState:
    """What a step leaves behind: the basis of the cross-field rules and of the forecast."""
    match step:
        case PurgeStep() | CoolDownStep():
            return PlasmaState(ar_slpm=step.ar_slpm, o2_slpm=step.o2_slpm, n2_slpm=step.n2_slpm)
        case IgniteStep():
            flows = {"ar_slpm": step.ar_slpm, "o2_slpm": step.o2_slpm, "n2_slpm": step.n2_slpm}
            return PlasmaState(True, index, step.power_kw, **flows)
        case RampStep():
            lit = before.lit and step.power_kw > 0
            flows = {"ar_slpm": step.ar_slpm, "o2_slpm": step.o2_slpm, "n2_slpm": step.n2_slpm}
            return PlasmaState(lit, before.lit_by if lit else None, step.power_kw, **flows)
        case DepositStep():
            last = step.layers[-1]
            flows = {"ar_slpm": last.ar_slpm, "o2_slpm": last.o2_slpm, "n2_slpm": last.n2_slpm}
            return PlasmaState(before.lit, before.lit_by, last.power_kw, **flows)
        case DwellStep():
            return before
    raise AssertionError(f"unknown step {step!r}")  # pragma: no cover


def plasma_states(recipe: Recipe) -> list[tuple[PlasmaState, PlasmaState]]:
    """(before, after) for each step, in order."""
    states = []
    before = PlasmaState()
    for index, step in enumerate(recipe.steps):
        after = state_after(step, index, before)
        states.append((before, after))
        before = after
    return states


def turning_points_mm(recipe: Recipe, line: LineConfig) -> tuple[float, float]:
    """The turning points the recipe runs between: its own, else the line geometry's."""
    if recipe.stroke is not None:
        return recipe.stroke.turning_point_a_mm, recipe.stroke.turning_point_b_mm
    return line.geometry.turning_point_a_mm, line.geometry.turning_point_b_mm


def sicl4_full_scale_g_min(mfc: MfcConfig) -> float | None:
    """The SiCl4 MFC's full scale in g/min, or None when the line gives no conversion."""
    if mfc.grams_per_min_per_slpm is None:
        return None
    return mfc.g_min_for(mfc.full_scale_slpm)


# --------------------------------------------------------------------------------------------
# Limit checks: one generator per concern, each yielding (field path, reason)


def _check_power(loc: Loc, power_kw: float, line: LineConfig) -> Iterator[Finding]:
    max_kw = line.rf().max_power_kw
    if power_kw > max_kw:
        yield (
            (*loc, "power_kw"),
            f"{_num(power_kw)} kW exceeds the RF generator's maximum ({_num(max_kw)} kW)",
        )


def _check_gases(loc: Loc, flows: dict[str, float], line: LineConfig) -> Iterator[Finding]:
    for field, flow in flows.items():
        mfc = line.mfc(GAS_FIELDS[field])
        if flow > mfc.full_scale_slpm:
            yield (
                (*loc, field),
                f"{_num(flow)} slpm exceeds the {mfc.gas} MFC's full scale "
                f"({_num(mfc.full_scale_slpm)} slpm)",
            )


def _check_spindle(loc: Loc, rpm: float | None, line: LineConfig) -> Iterator[Finding]:
    max_rpm = line.axis("spindle").max_speed
    if rpm is not None and rpm > max_rpm:
        yield (
            (*loc, "spindle_rpm"),
            f"{_num(rpm)} rpm exceeds the spindle's maximum ({_num(max_rpm)} rpm)",
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
            f"{_num(layer.power_kw)} kW plus a trim of +{_num(high)} kW exceeds the RF "
            f"generator's maximum ({_num(max_kw)} kW)",
        )
    if layer.power_kw + low <= 0:
        yield (
            (*loc, "power_trim_kw"),
            f"{_num(layer.power_kw)} kW with a trim of {_num(low)} kW would put the plasma out",
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
            f"{_num(layer.sicl4_g_min)} g/min exceeds the SiCl4 MFC's full scale "
            f"({_num(full_scale)} g/min)",
        )
        return
    trimmed = layer.sicl4_g_min * (1 + layer.sicl4_trim_pct[1] / 100)
    if trimmed > full_scale:
        yield (
            (*loc, "sicl4_trim_pct"),
            f"{_num(layer.sicl4_g_min)} g/min trimmed by +{_num(layer.sicl4_trim_pct[1])} % "
            f"({_num(trimmed)} g/min) exceeds the SiCl4 MFC's full scale "
            f"({_num(full_scale)} g/min)",
        )


def _check_dopant_flow(loc: Loc, layer: Layer, line: LineConfig) -> Iterator[Finding]:
    mfc = line.mfc("mfc_dopant")
    if layer.dopant_slpm > mfc.full_scale_slpm:
        yield (
            (*loc, "dopant_slpm"),
            f"{_num(layer.dopant_slpm)} slpm exceeds the {mfc.gas} MFC's full scale "
            f"({_num(mfc.full_scale_slpm)} slpm)",
        )


def _check_traverse(loc: Loc, layer: Layer, line: LineConfig) -> Iterator[Finding]:
    max_mm_min = line.axis("carriage").max_speed
    if layer.traverse_mm_min > max_mm_min:
        yield (
            (*loc, "traverse_mm_min"),
            f"{_num(layer.traverse_mm_min)} mm/min exceeds the carriage's maximum speed "
            f"({_num(max_mm_min)} mm/min)",
        )
        return
    trimmed = layer.traverse_mm_min * (1 + layer.traverse_trim_pct[1] / 100)
    if trimmed > max_mm_min:
        yield (
            (*loc, "traverse_trim_pct"),
            f"{_num(layer.traverse_mm_min)} mm/min trimmed by +{_num(layer.traverse_trim_pct[1])} "
            f"% ({_num(trimmed)} mm/min) exceeds the carriage's maximum speed "
            f"({_num(max_mm_min)} mm/min)",
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
    travel = f"the carriage's travel ({_num(low)}-{_num(high)} mm)"
    a, b = turning_points_mm(recipe, line)
    for name, position in (("a", a), ("b", b)):
        if low <= position <= high:
            continue
        if recipe.stroke is not None:
            yield (
                ("stroke", f"turning_point_{name}_mm"),
                f"{_num(position)} mm lies outside {travel}",
            )
        else:
            yield (
                ("stroke",),
                f"the line's turning point {name.upper()} ({_num(position)} mm) lies outside "
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
                    f"a {_num(layer.coil_gap_mm)} mm gap on a {_num(diameter)} mm rod needs the "
                    f"torch slide at {_num(position)} mm, outside its travel "
                    f"({_num(slide.min_position_mm)}-{_num(slide.max_position_mm)} mm)",
                )
                break


def _check_target(recipe: Recipe, line: LineConfig) -> Iterator[Finding]:
    target = recipe.target_diameter_mm
    if target is None:
        return
    bait = line.geometry.bait_rod_diameter_mm
    gauge = line.gauge()
    if target <= bait:
        yield (
            ("target_diameter_mm",),
            f"{_num(target)} mm does not exceed the bait rod's diameter ({_num(bait)} mm)",
        )
    elif target > gauge.max_mm:
        yield (
            ("target_diameter_mm",),
            f"{_num(target)} mm exceeds the diameter gauge's range "
            f"({_num(gauge.min_mm)}-{_num(gauge.max_mm)} mm)",
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
                    f"ramping to {_num(step.power_kw)} kW needs a lit plasma: no ignite step "
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
            f"{_num(from_kw)} -> {_num(to_kw)} kW in {_num(duration_s)} s is "
            f"{_num(slope)} kW/s, beyond the RF generator's slew limit "
            f"({_num(max_slew_kw_s)} kW/s): allow at least {_num(needed)} s",
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
    needed = mfc.slpm_for(layer.sicl4_g_min)
    if layer.o2_slpm < needed:
        yield (
            (*loc, "o2_slpm"),
            f"{_num(layer.o2_slpm)} slpm of O2 cannot oxidise {_num(layer.sicl4_g_min)} g/min of "
            f"SiCl4 (SiCl4 + O2 -> SiO2 + 2 Cl2 needs at least {_num(needed)} slpm)",
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
    return [RecipeIssue(format_loc(loc), reason) for loc, reason in findings]


# --------------------------------------------------------------------------------------------
# Loading


def _pydantic_findings(exc: ValidationError) -> list[Finding]:
    return [(_clean_loc(e["loc"]), _pydantic_reason(e)) for e in exc.errors() if not _echo(e)]


def _echo(error: Any) -> bool:
    """A length error that only echoes invalid items (pydantic counts the valid ones)."""
    if error["type"] != "too_short":
        return False
    given = error.get("input")
    return isinstance(given, list | tuple) and len(given) >= error["ctx"]["min_length"]


def _clean_loc(loc: tuple[int | str, ...]) -> Loc:
    """Drop the discriminator tag pydantic puts after a step's index (steps.3.deposit.layers)."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        tagged = i >= 2 and loc[i - 2] == "steps" and isinstance(loc[i - 1], int)
        if tagged and part in STEP_KINDS:
            continue
        out.append(part)
    return tuple(out)


def _pydantic_reason(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field (misspelt? `povd recipe schema` lists the fields)"
    if kind == "missing":
        return "required field is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, int | float | str | bool) and kind not in ("union_tag_invalid",):
        return f"{message} (got {value!r})"
    return message


def _yaml_findings(root: yaml.Node | None) -> list[Finding]:
    """Duplicate keys: YAML keeps the last silently, as it would a misspelt field."""
    findings: list[Finding] = []

    def walk(node: yaml.Node, loc: Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                name = str(key.value)
                if name in seen and name != "<<":
                    findings.append(((*loc, name), "duplicate key: YAML would keep the last"))
                seen.add(name)
                walk(value, (*loc, name))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*loc, i))

    if root is not None:
        walk(root, ())
    return findings


def _line_of(root: yaml.Node | None, loc: Loc) -> int | None:
    """The 1-based line of the deepest node of the file along a field path."""
    node = root
    if node is None:
        return None
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            child = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            child = node.value[part] if 0 <= part < len(node.value) else None
        if child is None:
            break
        node = child
    return int(node.start_mark.line) + 1


def _issues(findings: Sequence[Finding], root: yaml.Node | None) -> list[RecipeIssue]:
    issues = [RecipeIssue(format_loc(loc), reason, _line_of(root, loc)) for loc, reason in findings]
    # In the order of the file, as the operator reads it.
    return sorted(issues, key=lambda issue: issue.line or 0)


def parse_recipe(text: str, line: LineConfig, path: Path | None = None) -> Recipe:
    """Validate recipe text (e.g. the text recorded in a run header) against a line."""
    where = path or Path("<recipe>")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line_no = int(mark.line) + 1 if mark is not None else None
        raise RecipeError(where, [RecipeIssue("", f"not valid YAML: {exc}", line_no)]) from None
    findings = _yaml_findings(root)
    if not isinstance(data, dict):
        findings.append(((), "a recipe is a YAML mapping (name, version, steps)"))
        raise RecipeError(where, _issues(findings, root))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        # Structure first: limit checks need a well-formed recipe to read.
        raise RecipeError(where, _issues(findings + _pydantic_findings(exc), root)) from None
    findings += [(_parse_field(i.field), i.reason) for i in check_recipe(recipe, line)]
    issues = _issues(findings, root)
    if issues:
        raise RecipeError(where, issues)
    recipe._text = text
    recipe._path = path
    return recipe


def _parse_field(field: str) -> Loc:
    """'steps[3].layers[1].x' -> ('steps', 3, 'layers', 1, 'x'): the inverse of format_loc."""
    loc: list[str | int] = []
    for part in field.replace("[", ".[").split("."):
        if not part:
            continue
        loc.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(loc)


def load_recipe(path: Path, line: LineConfig) -> Recipe:
    """Read and validate a recipe file; RecipeError lists every problem with its field path."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(path, [RecipeIssue("", f"cannot read the recipe: {exc}")]) from None
    return parse_recipe(text, line, path)
