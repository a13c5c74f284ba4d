"""The forecast of a recipe on a line, from the controller's process model: how long it takes,
what it consumes, how much glass it lays down and the diameter it reaches, layer by layer.

It is a prediction at a given deposition efficiency, shown by ``povd validate`` before any run,
and the open-loop estimate the controller falls back on when the diameter gauge is lost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.config.line import LineConfig
from controller.recipes import process_model
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
)
from controller.recipes.recipe import GAS_FIELDS, format_loc


@dataclass(frozen=True)
class LayerForecast:
    step_index: int
    layer_index: int
    label: str
    passes: int
    pass_duration_s: float
    duration_s: float
    sicl4_g: float
    dopant_l: float
    deposited_g: float
    start_diameter_mm: float
    end_diameter_mm: float

    @property
    def field(self) -> str:
        return format_loc(("steps", self.step_index, "layers", self.layer_index))

    def to_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "label": self.label,
            "passes": self.passes,
            "pass_duration_s": self.pass_duration_s,
            "duration_s": self.duration_s,
            "sicl4_g": self.sicl4_g,
            "dopant_l": self.dopant_l,
            "deposited_g": self.deposited_g,
            "start_diameter_mm": self.start_diameter_mm,
            "end_diameter_mm": self.end_diameter_mm,
        }


@dataclass(frozen=True)
class StepForecast:
    index: int
    kind: str
    label: str
    duration_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind,
            "label": self.label,
            "duration_s": self.duration_s,
        }


@dataclass(frozen=True)
class Forecast:
    recipe_name: str
    recipe_version: int
    efficiency: float
    deposition_length_mm: float
    start_diameter_mm: float
    duration_s: float
    gas_l: dict[str, float]  # standard litres per gas, at each MFC's standard
    dopant_gas: str
    sicl4_g: float
    deposited_g: float
    final_diameter_mm: float
    target_diameter_mm: float | None
    steps: tuple[StepForecast, ...]
    layers: tuple[LayerForecast, ...]
    # Forecast diameter after each pass, all layers in order (the open-loop estimate).
    pass_end_diameters_mm: tuple[float, ...]

    @property
    def duration_h(self) -> float:
        return self.duration_s / 3600.0

    @property
    def passes(self) -> int:
        return len(self.pass_end_diameters_mm)

    @property
    def target_reached(self) -> bool | None:
        """None without a target; else whether the forecast diameter reaches it."""
        if self.target_diameter_mm is None:
            return None
        return self.final_diameter_mm >= self.target_diameter_mm

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": {"name": self.recipe_name, "version": self.recipe_version},
            "efficiency": self.efficiency,
            "deposition_length_mm": self.deposition_length_mm,
            "start_diameter_mm": self.start_diameter_mm,
            "duration_s": self.duration_s,
            "passes": self.passes,
            "gas_l": dict(self.gas_l),
            "sicl4_g": self.sicl4_g,
            "deposited_g": self.deposited_g,
            "final_diameter_mm": self.final_diameter_mm,
            "target_diameter_mm": self.target_diameter_mm,
            "target_reached": self.target_reached,
            "steps": [s.to_json() for s in self.steps],
            "layers": [layer.to_json() for layer in self.layers],
        }

    def to_text(self) -> str:
        return "\n".join(
            [
                f"Forecast for {self.recipe_name} v{self.recipe_version} "
                f"(efficiency {self.efficiency:.2f}, deposition length "
                f"{self.deposition_length_mm:g} mm, bait rod {self.start_diameter_mm:g} mm)",
                "",
                *self._steps_table(),
                "",
                *self._layers_table(),
                "",
                *self._totals(),
            ]
        )

    def _steps_table(self) -> list[str]:
        header = f"{'step':<10}{'kind':<11}{'label':<26}{'duration':>10}"
        rows = [
            f"{f'steps[{s.index}]':<10}{s.kind:<11}{s.label[:25]:<26}{_hms(s.duration_s):>10}"
            for s in self.steps
        ]
        return [header, *rows]

    def _layers_table(self) -> list[str]:
        header = (
            f"{'layer':<20}{'passes':>7}{'pass':>9}{'duration':>10}{'SiCl4 g':>10}"
            f"{self.dopant_gas + ' L':>9}{'glass g':>9}{'diameter mm':>18}"
        )
        rows = [
            f"{layer.field:<20}{layer.passes:>7}{_hms(layer.pass_duration_s):>9}"
            f"{_hms(layer.duration_s):>10}{layer.sicl4_g:>10.0f}{layer.dopant_l:>9.1f}"
            f"{layer.deposited_g:>9.0f}"
            f"{f'{layer.start_diameter_mm:.2f} -> {layer.end_diameter_mm:.2f}':>18}"
            for layer in self.layers
        ]
        return [header, *rows]

    def _totals(self) -> list[str]:
        gases = ", ".join(f"{gas} {litres:.0f}" for gas, litres in self.gas_l.items())
        return [
            f"duration        {_hms(self.duration_s)} ({self.duration_h:.2f} h)",
            f"passes          {self.passes}",
            f"SiCl4           {self.sicl4_g:.0f} g",
            f"gases           {gases} (standard litres)",
            f"deposited glass {self.deposited_g:.0f} g",
            f"final diameter  {self.final_diameter_mm:.2f} mm{self._target_text()}",
        ]

    def _target_text(self) -> str:
        if self.target_diameter_mm is None:
            return ""
        verdict = "reached" if self.target_reached else "NOT reached"
        return f" (target {self.target_diameter_mm:g} mm: {verdict})"


def _hms(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class _Tally:
    """Accumulates consumption and growth while the forecast walks the steps."""

    def __init__(self, line: LineConfig, efficiency: float, length_mm: float) -> None:
        self.line = line
        self.efficiency = efficiency
        self.length_mm = length_mm
        self.gas_names = {field: line.mfc(device).gas for field, device in GAS_FIELDS.items()}
        self.dopant_gas = line.mfc("mfc_dopant").gas
        self.gas_l: dict[str, float] = dict.fromkeys(self.gas_names.values(), 0.0)
        self.gas_l[self.dopant_gas] = 0.0
        self.sicl4_g = 0.0
        self.deposited_g = 0.0
        self.diameter_mm = line.geometry.bait_rod_diameter_mm
        self.pass_diameters: list[float] = []
        self.layers: list[LayerForecast] = []

    def flow(self, flows: dict[str, float], duration_s: float) -> None:
        for field, slpm in flows.items():
            self.gas_l[self.gas_names[field]] += slpm * duration_s / 60.0

    def layer(self, step_index: int, layer_index: int, layer: LayerOp) -> float:
        pass_s = process_model.pass_duration_s(self.length_mm, layer.traverse_mm_min)
        start = self.diameter_mm
        per_pass_g = process_model.deposited_mass_g(self.efficiency, layer.sicl4_g_min, pass_s)
        for _ in range(layer.passes):
            self.diameter_mm = process_model.grown_diameter_mm(
                self.diameter_mm, per_pass_g, self.length_mm
            )
            self.pass_diameters.append(self.diameter_mm)
        duration_s = pass_s * layer.passes
        flows = {"ar_slpm": layer.ar_slpm, "o2_slpm": layer.o2_slpm, "n2_slpm": layer.n2_slpm}
        self.flow(flows, duration_s)
        dopant_l = layer.dopant_slpm * duration_s / 60.0
        self.gas_l[self.dopant_gas] += dopant_l
        sicl4_g = layer.sicl4_g_min * duration_s / 60.0
        self.sicl4_g += sicl4_g
        self.deposited_g += per_pass_g * layer.passes
        self.layers.append(
            LayerForecast(
                step_index=step_index,
                layer_index=layer_index,
                label=layer.name,
                passes=layer.passes,
                pass_duration_s=pass_s,
                duration_s=duration_s,
                sicl4_g=sicl4_g,
                dopant_l=dopant_l,
                deposited_g=per_pass_g * layer.passes,
                start_diameter_mm=start,
                end_diameter_mm=self.diameter_mm,
            )
        )
        return duration_s


def _flows(op: PurgeOp | IgniteOp | RampOp | CooldownOp | LayerOp) -> dict[str, float]:
    return {"ar_slpm": op.ar_slpm, "o2_slpm": op.o2_slpm, "n2_slpm": op.n2_slpm}


def _step_duration(index: int, op: Op, before: dict[str, float], tally: _Tally,
                   ) -> tuple[float, dict[str, float]]:
    """A step's expected duration, tallying its consumption on the way; and the process
    gases it leaves flowing."""
    match op:
        case DwellOp():
            tally.flow(before, op.duration_s)
            return op.duration_s, before
        case PurgeOp():
            tally.flow(_flows(op), op.duration_s)
            return op.duration_s, _flows(op)
        case IgniteOp():
            tally.flow(_flows(op), op.expected_duration_s)
            return op.expected_duration_s, _flows(op)
        case RampOp():
            # Linear ramps: the mean of the start and end flows.
            after = _flows(op)
            tally.flow({f: (before[f] + v) / 2 for f, v in after.items()}, op.duration_s)
            return op.duration_s, after
        case DepositOp():
            duration = sum(tally.layer(index, j, layer) for j, layer in enumerate(op.layers))
            return duration, _flows(op.layers[-1])
        case CooldownOp():
            total_s = op.power_ramp_down_s + op.duration_s
            tally.flow(_flows(op), total_s)
            return total_s, _flows(op)
    raise AssertionError(f"unknown step {op!r}")  # pragma: no cover


def _stroke_mm(plan: Plan, line: LineConfig) -> tuple[float, float]:
    deposit = next(iter(plan.deposit_steps), None)
    if deposit is not None:
        return deposit.turning_point_a_mm, deposit.turning_point_b_mm
    return line.geometry.turning_point_a_mm, line.geometry.turning_point_b_mm


def forecast(plan: Plan, line: LineConfig, efficiency: float = 0.5) -> Forecast:
    """Forecast a plan on a line at a deposition efficiency: the very steps the executor runs."""
    if not 0 < efficiency <= 1:
        raise ValueError(f"efficiency must lie in (0, 1], got {efficiency}")
    a_mm, b_mm = _stroke_mm(plan, line)
    # The torch lays glass over the stroke between the turning points.
    tally = _Tally(line, efficiency, b_mm - a_mm)
    steps = []
    flows = dict.fromkeys(GAS_FIELDS, 0.0)
    for index, op in enumerate(plan.steps):
        duration_s, flows = _step_duration(index, op, flows, tally)
        steps.append(StepForecast(index, Plan.kind(op), op.label, duration_s))
    return Forecast(
        recipe_name=plan.name,
        recipe_version=plan.version,
        efficiency=efficiency,
        deposition_length_mm=b_mm - a_mm,
        start_diameter_mm=line.geometry.bait_rod_diameter_mm,
        duration_s=sum(s.duration_s for s in steps),
        gas_l=tally.gas_l,
        dopant_gas=tally.dopant_gas,
        sicl4_g=tally.sicl4_g,
        deposited_g=tally.deposited_g,
        final_diameter_mm=tally.diameter_mm,
        target_diameter_mm=plan.target_diameter_mm,
        steps=tuple(steps),
        layers=tuple(tally.layers),
        pass_end_diameters_mm=tuple(tally.pass_diameters),
    )
