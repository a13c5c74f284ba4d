"""The Plan: a recipe reduced to the operations the executor performs, in machine units, with
the plasma's state before each step. It is the only reading of a recipe: the executor runs it
and the forecast predicts it, so the two cannot disagree. Keeping it apart from the recipe
file's schema lets the file format evolve without touching the code that moves the machine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerances:
    flow_pct: float  # % of each MFC's full scale
    power_kw: float
    settle_s: float  # process seconds to reach setpoints before the step fails


# The one home of the defaults: a recipe step that leaves a tolerance unset gets these.
DEFAULT_TOLERANCES = Tolerances(flow_pct=5.0, power_kw=2.0, settle_s=30.0)


@dataclass(frozen=True)
class PurgeOp:
    duration_s: float
    ar_slpm: float
    o2_slpm: float
    n2_slpm: float
    spindle_rpm: float
    tolerances: Tolerances = DEFAULT_TOLERANCES
    label: str = ""


@dataclass(frozen=True)
class IgniteOp:
    ar_slpm: float
    o2_slpm: float
    n2_slpm: float
    power_kw: float
    spindle_rpm: float
    timeout_s: float
    attempts: int
    ramp_kw_s: float
    tolerances: Tolerances = DEFAULT_TOLERANCES
    expected_duration_s: float = 0.0  # what the forecast counts on
    label: str = ""


@dataclass(frozen=True)
class RampOp:
    duration_s: float
    power_kw: float  # 0: the plasma goes out at the end of the ramp
    ar_slpm: float
    o2_slpm: float
    n2_slpm: float
    spindle_rpm: float | None
    tolerances: Tolerances = DEFAULT_TOLERANCES
    label: str = ""


@dataclass(frozen=True)
class LayerOp:
    name: str
    passes: int
    power_kw: float
    ar_slpm: float
    o2_slpm: float
    n2_slpm: float
    sicl4_g_min: float
    dopant_slpm: float
    traverse_mm_min: float
    spindle_rpm: float
    heaters: bool
    coil_gap_mm: float
    power_trim_kw: tuple[float, float] = (0.0, 0.0)
    traverse_trim_pct: tuple[float, float] = (0.0, 0.0)
    sicl4_trim_pct: tuple[float, float] = (0.0, 0.0)  # the recipe's authority over SiCl4
    # Machine units and the product's geometry, computed by planning:
    sicl4_slpm: float = 0.0  # the SiCl4 MFC's setpoint for sicl4_g_min
    target_diameter_mm: float = 0.0  # the planned outer boundary of this layer
    extra_passes_max: int = 0  # passes an operator may add (the recipe's extra_passes)

    @property
    def dopant_per_sicl4(self) -> float:
        """The composition: dopant slpm per SiCl4 slpm, held whatever the SiCl4 scale."""
        return self.dopant_slpm / self.sicl4_slpm if self.sicl4_slpm > 0 else 0.0


@dataclass(frozen=True)
class DepositOp:
    layers: tuple[LayerOp, ...]
    turning_point_a_mm: float
    turning_point_b_mm: float
    tolerances: Tolerances = DEFAULT_TOLERANCES
    label: str = ""

    @property
    def total_passes(self) -> int:
        return sum(layer.passes for layer in self.layers)

    @property
    def stroke_mm(self) -> float:
        return abs(self.turning_point_b_mm - self.turning_point_a_mm)


@dataclass(frozen=True)
class DwellOp:
    duration_s: float
    spindle_rpm: float | None = None
    label: str = ""


@dataclass(frozen=True)
class CooldownOp:
    power_ramp_down_s: float
    duration_s: float  # cooling after RF off
    ar_slpm: float
    o2_slpm: float
    n2_slpm: float
    spindle_rpm: float
    tolerances: Tolerances = DEFAULT_TOLERANCES
    label: str = ""


Op = PurgeOp | IgniteOp | RampOp | DepositOp | DwellOp | CooldownOp


KINDS: dict[type, str] = {PurgeOp: "purge", IgniteOp: "ignite", RampOp: "ramp",
                          DepositOp: "deposit", DwellOp: "dwell", CooldownOp: "cool_down"}


@dataclass(frozen=True)
class Plan:
    name: str
    version: int
    steps: tuple[Op, ...]
    target_diameter_mm: float | None = None
    # The plasma before each step, as the steps before it leave it: lit or not, and by which
    # ignition step (to re-light it with after a loss).
    lit_before: tuple[bool, ...] = ()
    lit_by: tuple[int | None, ...] = ()

    def needs_plasma(self, index: int) -> bool:
        """The step expects the plasma burning when it begins (an ignition or a cool-down
        brings its own)."""
        op = self.steps[index]
        return self.lit_before[index] and not isinstance(op, CooldownOp | IgniteOp)

    def ignition_before(self, index: int) -> IgniteOp | None:
        """The ignition that lit the plasma this step expects."""
        by = self.lit_by[index]
        op = None if by is None else self.steps[by]
        return op if isinstance(op, IgniteOp) else None

    @staticmethod
    def kind(op: Op) -> str:
        return KINDS[type(op)]

    @property
    def deposit_steps(self) -> list[DepositOp]:
        return [s for s in self.steps if isinstance(s, DepositOp)]

    @property
    def total_passes(self) -> int:
        return sum(s.total_passes for s in self.deposit_steps)
