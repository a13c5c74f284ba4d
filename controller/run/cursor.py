"""Where a run is (saved at every pass boundary, restored on resume) and what each pass made:
the executor's state that outlives it, and the record of a pass."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Cursor:
    """Where the run is: saved at every pass boundary, restored on resume."""

    step: int = 0
    layer: int = 0
    layer_pass: int = 0  # passes completed in the current layer
    passes_done: int = 0
    sicl4_scale: float = 1.0
    traverse_pct: float = 0.0  # the traverse trim of the pass running (operator + loop)
    factor: float = 1.0  # the glass per pass relative to the plan, as last set
    diameter_mm: float | None = None
    efficiency_estimate: float | None = None
    start_diameter_mm: float | None = None  # measured when deposition began
    basis_g: float = 0.0  # glass the passes so far would have made at efficiency 1
    extra_passes: dict[str, int] | None = None  # layer index -> passes added by the operator

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cursor:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def extra_for(self, layer: int) -> int:
        return (self.extra_passes or {}).get(str(layer), 0)

    def add_extra(self, layer: int, passes: int) -> None:
        extra = dict(self.extra_passes or {})
        extra[str(layer)] = extra.get(str(layer), 0) + passes
        self.extra_passes = extra


@dataclass(frozen=True)
class PassSummary:
    layer: int
    layer_name: str
    pass_index: int  # within the layer
    passes_done: int
    diameter_mm: float | None
    diameter_source: str  # "gauge" or "forecast"
    planned_boundary_mm: float  # the layer's planned outer diameter
    deposited_g: float
    duration_s: float  # process seconds
    sicl4_g_min: float
    sicl4_scale: float
    dopant_slpm: float
    traverse_mm_min: float
    efficiency: float  # the deposition efficiency the loop estimated at the pass's end
    wanted_factor: float  # what the loop wanted of this pass's glass (x plan)
    limited: bool  # the recipe's authority bound it
    composition_error_pct: float | None  # measured dopant/SiCl4 over the pass vs the recipe
    started_wall: float
    ended_wall: float
