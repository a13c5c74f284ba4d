"""The controller's process model: pure maths of deposition (domain.md's growth model).

Imported by the simulators' plant too, which models more than this forecast does (efficiency
against power and gap, drift, noise): the forecast is a prediction, not a copy."""

from __future__ import annotations

import itertools
import math

SIO2_PER_SICL4 = 0.354  # g of SiO2 per g of SiCl4 (SiO2 60.08 / SiCl4 169.9)
SILICA_DENSITY_G_CM3 = 2.203
# SiCl4 + O2 -> SiO2 + 2 Cl2: a mole of O2 per mole of SiCl4, so a standard litre per litre.
O2_SLPM_PER_SICL4_SLPM = 1.0


def grown_diameter_mm(
    diameter_mm: float,
    deposited_g: float,
    length_mm: float,
    density_g_cm3: float = SILICA_DENSITY_G_CM3,
) -> float:
    """D_new = sqrt(D^2 + 4 dm / (pi rho L)), in mm."""
    if length_mm <= 0:
        raise ValueError("deposition length must be positive")
    d_cm = diameter_mm / 10
    l_cm = length_mm / 10
    return math.sqrt(d_cm**2 + 4 * deposited_g / (math.pi * density_g_cm3 * l_cm)) * 10


def deposited_mass_g(efficiency: float, sicl4_g_min: float, duration_s: float) -> float:
    """dm = efficiency x SiCl4 mass flow x 0.354 x time."""
    return efficiency * sicl4_g_min * SIO2_PER_SICL4 * duration_s / 60.0


def mass_for_diameter_g(
    from_mm: float, to_mm: float, length_mm: float, density_g_cm3: float = SILICA_DENSITY_G_CM3
) -> float:
    """The inverse of grown_diameter_mm: glass needed to grow from one diameter to another."""
    d0, d1, l_cm = from_mm / 10, to_mm / 10, length_mm / 10
    return math.pi * density_g_cm3 * l_cm * (d1**2 - d0**2) / 4


def pass_duration_s(stroke_mm: float, traverse_mm_min: float) -> float:
    """One pass: the carriage crosses the stroke at the traverse speed."""
    if traverse_mm_min <= 0:
        raise ValueError("traverse speed must be positive")
    return stroke_mm / traverse_mm_min * 60.0


def efficiency_from_growth(
    from_mm: float,
    to_mm: float,
    length_mm: float,
    sicl4_g_min: float,
    duration_s: float,
    *,
    density_g_cm3: float = SILICA_DENSITY_G_CM3,
) -> float:
    """The deposition efficiency that explains a measured growth (the inverse of the model)."""
    offered_g = sicl4_g_min * SIO2_PER_SICL4 * duration_s / 60.0
    if offered_g <= 0:
        raise ValueError("no SiCl4 offered: efficiency undefined")
    return mass_for_diameter_g(from_mm, to_mm, length_mm, density_g_cm3) / offered_g


def interpolated_boundaries_mm(
    start_mm: float,
    masses_g: list[float],
    anchors: dict[int, float],
    length_mm: float,
) -> list[float]:
    """The outer diameter after each of a sequence of layers that lay down ``masses_g``.

    Where ``anchors`` fixes a layer's outer diameter, the layers between two anchors share the
    cross-section between them in proportion to their glass (a cross-section grows linearly
    with the glass); after the last anchor, they grow as their glass says."""
    area = [start_mm**2]
    for mass in masses_g:
        area.append(grown_diameter_mm(math.sqrt(area[-1]), mass, length_mm) ** 2)
    fixed = {0: area[0], **{i + 1: d**2 for i, d in anchors.items()}}
    points = sorted(fixed)
    out = list(area)
    for low, high in itertools.pairwise(points):
        span_nominal = area[high] - area[low]
        for k in range(low + 1, high + 1):
            share = (area[k] - area[low]) / span_nominal if span_nominal > 0 else 1.0
            out[k] = fixed[low] + (fixed[high] - fixed[low]) * share
    last = points[-1]
    for k in range(last + 1, len(area)):
        out[k] = fixed[last] + area[k] - area[last]
    return [math.sqrt(max(a, 0.0)) for a in out[1:]]
