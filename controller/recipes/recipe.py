"""Recipes: the pydantic models of a recipe file, the errors an operator reads, and what the
sequence of steps leaves behind (the plasma's state after each step). Checks against the line
live in ``checks``, reading a file in ``loading``.

A recipe is data (style.md principle 6): the executor interprets it. Everything here is pure:
no device is touched, so an invalid recipe is refused before anything moves. Every error is
reported at once with its field path (``steps[3].layers[1].sicl4_g_min``), never a traceback.
Every machine figure comes from the line configuration (``controller.config.line.LineConfig``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from controller.config.line import LineConfig, MfcConfig
from controller.recipes.plan import DEFAULT_TOLERANCES

Loc = tuple[str | int, ...]
Finding = tuple[Loc, str]

STEP_KINDS = ("purge", "ignite", "ramp", "deposit", "dwell", "cool_down")
# Which MFC of the line each gas field of a recipe sets.
GAS_FIELDS = {"ar_slpm": "mfc_ar", "o2_slpm": "mfc_o2", "n2_slpm": "mfc_n2"}
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
MAX_EXTRA_PASSES = 100  # a layer may be given at most this many extra passes
# A run is tens to hundreds of passes (domain.md: 50-300); 10,000 four-minute passes is four
# weeks. Beyond it a count is a typo, and the forecast and the plan walk every pass.
MAX_RUN_PASSES = 10_000
# No step lasts longer than a week of process time (a cool-down is minutes, a whole run hours);
# beyond it a figure is a typo, and 1.7e308 s overflowed the forecast's gas volumes to inf.
MAX_STEP_S = 7 * 24 * 3600.0


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


def num(value: float) -> str:
    """A figure as an operator writes it: 75.8, not 75.80000000000001."""
    return f"{round(value, 3):g}"


# --------------------------------------------------------------------------------------------
# Models


class _Strict(BaseModel):
    # extra="forbid": a misspelt field must never be silently ignored. allow_inf_nan=False: YAML
    # reads .nan and .inf as floats, and a bound like gt=0 lets inf through (a cool-down of
    # `duration_s: .inf` was a valid recipe).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _trim_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    low, high = bounds
    if not low <= 0 <= high:
        raise ValueError(
            f"trim bounds must be [low <= 0, high >= 0], got [{num(low)}, {num(high)}]"
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
        default=DEFAULT_TOLERANCES.flow_pct, gt=0, le=100,
        description="allowed flow deviation, % of each MFC's full scale"
    )
    settle_timeout_s: float = Field(
        default=DEFAULT_TOLERANCES.settle_s, gt=0, le=MAX_STEP_S,
        description="time allowed to reach the setpoints before the step fails"
    )


class _PoweredStep(_StepBase):
    power_tolerance_kw: float = Field(
        default=DEFAULT_TOLERANCES.power_kw, gt=0,
        description="allowed forward-power deviation from setpoint"
    )


class PurgeStep(_StepBase):
    """Flow gases with the RF off: before ignition, or after cool-down."""

    step: Literal["purge"]
    duration_s: float = Field(gt=0, le=MAX_STEP_S)
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
    timeout_s: float = Field(
        gt=0, le=MAX_STEP_S, description="wait this long for plasma-lit, per attempt"
    )
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
    duration_s: float = Field(gt=0, le=MAX_STEP_S)
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
    target_diameter_mm: float | None = Field(
        default=None, gt=0,
        description="this layer's planned outer diameter; unset: from the recipe at the "
        "line's nominal efficiency (scaled to the recipe's target)",
    )
    extra_passes: tuple[int, int] = Field(
        default=(0, 0),
        description="[0, N]: passes an operator may add to this layer when the trims cannot "
        "reach its boundary",
    )

    @field_validator("extra_passes")
    @classmethod
    def _extra_from_zero(cls, bounds: tuple[int, int]) -> tuple[int, int]:
        low, high = bounds
        if low != 0 or not 0 <= high <= MAX_EXTRA_PASSES:
            raise ValueError(f"extra passes are [0, N] with 0 <= N <= {MAX_EXTRA_PASSES}, "
                             f"got [{low}, {high}]")
        return bounds


class DepositStep(_PoweredStep):
    """Deposit glass: the layers in order, pass after pass between the turning points."""

    step: Literal["deposit"]
    layers: tuple[Layer, ...] = Field(min_length=1)
    coil_gap_tolerance_mm: float = Field(default=2.0, gt=0)


class DwellStep(_StepBase):
    """Hold the previous step's power and gases for a time, precursors off."""

    step: Literal["dwell"]
    duration_s: float = Field(gt=0, le=MAX_STEP_S)
    spindle_rpm: float | None = Field(default=None, gt=0, description="unset: keep the speed")


class CoolDownStep(_StepBase):
    """Power down, RF off, purge gases on, the rod cooling while it turns."""

    step: Literal["cool_down"]
    power_ramp_down_s: float = Field(
        default=30.0, gt=0, le=MAX_STEP_S, description="power to zero over this"
    )
    duration_s: float = Field(gt=0, le=MAX_STEP_S, description="cooling time after RF off")
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

    @field_validator("steps")
    @classmethod
    def _passes_bounded(cls, steps: tuple[Step, ...]) -> tuple[Step, ...]:
        total = sum(layer.passes for step in steps if isinstance(step, DepositStep)
                    for layer in step.layers)
        if total > MAX_RUN_PASSES:
            raise ValueError(f"{total} passes in all: more than the {MAX_RUN_PASSES} a run may "
                             "have (a run is tens to hundreds)")
        return steps

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
