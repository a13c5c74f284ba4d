"""The recipe's authority over a layer (domain.md rule 12): how far a closed-loop correction
may take its SiCl4 flow (the dopant in ratio) and its traverse speed.

The layer grants the trims; the line only narrows them: its ``diameter_correction_limits``,
each MFC's full scale (the dopant scales with the SiCl4), the O2 needed to oxidise the
SiCl4 (the recipe's cross-check, kept valid at the corrected flow) and the carriage's top
speed. Power is not part of it: power shifts the dopant's uptake, so it is the operator's."""

from __future__ import annotations

from dataclasses import dataclass

from controller.config.line import LineConfig
from controller.recipes.plan import LayerOp
from controller.recipes.process_model import O2_SLPM_PER_SICL4_SLPM


@dataclass(frozen=True)
class Authority:
    sicl4_scale: tuple[float, float]  # multiplies the layer's SiCl4 (and dopant) flow
    traverse_pct: tuple[float, float]  # the traverse trim, operator's and loop's together
    sicl4_high_by: str  # what sets the upper SiCl4 bound (shown when a target is out of reach)

    def mass_factor(self, sicl4_scale: float, traverse_pct: float) -> float:
        """Glass per pass relative to the plan: more SiCl4, or a slower pass, lays more."""
        return sicl4_scale / (1 + traverse_pct / 100)

    @property
    def mass_factor_range(self) -> tuple[float, float]:
        (s_low, s_high), (t_low, t_high) = self.sicl4_scale, self.traverse_pct
        return self.mass_factor(s_low, t_high), self.mass_factor(s_high, t_low)


def layer_authority(layer: LayerOp, line: LineConfig) -> Authority:
    s_low = 1 + layer.sicl4_trim_pct[0] / 100
    highs = {"the layer's sicl4_trim_pct": 1 + layer.sicl4_trim_pct[1] / 100}
    line_low, line_high = line.supervision.diameter_correction_limits
    highs["the line's diameter_correction_limits"] = line_high
    if layer.sicl4_slpm > 0:
        highs["the SiCl4 MFC's full scale"] = (
            line.mfc("mfc_sicl4").full_scale_slpm / layer.sicl4_slpm)
        highs["the O2 needed to oxidise it"] = layer.o2_slpm / (
            layer.sicl4_slpm * O2_SLPM_PER_SICL4_SLPM)
    if layer.dopant_slpm > 0:
        highs["the dopant MFC's full scale"] = (
            line.mfc("mfc_dopant").full_scale_slpm / layer.dopant_slpm)
    high_by = min(highs, key=lambda k: highs[k])
    # A validated recipe runs at scale 1; a narrowing never takes that away.
    s_high = max(1.0, highs[high_by])
    s_low = min(1.0, max(s_low, line_low))

    t_low, t_high = layer.traverse_trim_pct
    top_pct = (line.axis("carriage").max_speed / layer.traverse_mm_min - 1) * 100
    t_high = max(0.0, min(t_high, top_pct))
    return Authority((s_low, s_high), (t_low, t_high), high_by)
