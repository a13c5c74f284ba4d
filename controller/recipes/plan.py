"""The Plan: a recipe reduced to the operations the executor performs, in machine units, with
the plasma's state before each step. It is the only reading of a recipe: the executor runs it
and the forecast predicts it, so the two cannot disagree. Keeping it apart from the recipe
file's schema lets the file format evolve without touching the code that moves the machine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerances:
    flow_pct: float = 5.0  # % of each MFC's full scale
    power_kw: float = 2.0
    settle_s: float = 30.0  # process seconds to reach setpoints before the step fails


@dataclass(frozen=True)
class PurgeOp:
    duration_s: float
    ar_slpm: float
    o2_slpm: float
    n2_slpm: float
    spindle_rpm: float
    tolerances: Tolerances = Tolerances()
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
    tolerances: Tolerances = Tolerances()
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
    tolerances: Tolerances = Tolerances()
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


@dataclass(frozen=True)
class DepositOp:
    layers: tuple[LayerOp, ...]
    turning_point_a_mm: float
    turning_point_b_mm: float
    tolerances: Tolerances = Tolerances()
    label: str = ""

    @property
    def total_passes(self) -> int:
        return sum(layer.passes for layer in self.layers)


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
    tolerances: Tolerances = Tolerances()
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
