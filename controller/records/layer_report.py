"""A run's passes summed up per layer, for the run report (issue 9, domain rule 12): each
layer's planned and measured boundary and radial thickness, what the closed loop used (the
SiCl4 and dopant scales, the traverse speeds, the passes the recipe's trims bound) and the
composition it held. Pure: it reads recorded passes only, so a report needs neither the recipe
nor the line's configuration."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from controller.records.schema import PassRecord


@dataclass(frozen=True, slots=True)
class Span:
    """A quantity over a layer's passes: the pass-weighted mean and the range."""

    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float | None], digits: int = 4) -> Span | None:
        known = [v for v in values if v is not None]
        if not known:
            return None
        return cls(round(sum(known) / len(known), digits), round(min(known), digits),
                   round(max(known), digits))


@dataclass(frozen=True, slots=True)
class LayerReport:
    step: int | None  # the deposit step's index in the plan
    layer: int  # within the step
    name: str
    passes: int  # run
    planned_passes: int | None
    extra_passes: int  # added by the operator
    complete: bool  # every planned and added pass was run
    planned_boundary_mm: float | None
    measured_boundary_mm: float | None  # the layer's last pass
    boundary_source: str | None  # "gauge" or "forecast" (the gauge lost)
    boundary_error_mm: float | None
    boundary_error_pct: float | None
    planned_thickness_mm: float | None  # radial: half the diameters' difference
    measured_thickness_mm: float | None
    thickness_error_pct: float | None
    sicl4_scale: Span | None
    dopant_scale: Span | None  # the dopant flow over the recipe's (None without dopant)
    traverse_mm_min: Span | None
    limited_passes: int  # passes the loop was bound by the recipe's trims
    largest_step_pct: float | None  # the largest change of glass per pass from one to the next
    composition_error_mean_pct: float | None  # measured dopant/SiCl4 vs the recipe's
    composition_error_worst_pct: float | None  # the largest in size, with its sign


def layer_reports(passes: Sequence[PassRecord]) -> list[LayerReport]:
    """One report per layer, in the order the layers ran; the measured inner boundary of a
    layer is the one the layer before it reached (the first: the rod when deposition began)."""
    reports: list[LayerReport] = []
    for rows in _by_layer(passes):
        inner = reports[-1].measured_boundary_mm if reports else rows[0].start_diameter_mm
        reports.append(_layer(rows, inner))
    return reports


def _by_layer(passes: Iterable[PassRecord]) -> list[list[PassRecord]]:
    groups: dict[tuple[int | None, int], list[PassRecord]] = {}
    for record in passes:
        groups.setdefault((record.step, record.layer), []).append(record)
    return list(groups.values())


def _layer(rows: list[PassRecord], measured_inner_mm: float | None) -> LayerReport:
    first, last = rows[0], rows[-1]
    planned, measured = last.planned_boundary_mm, last.diameter_mm
    planned_thickness = _thickness(planned, last.planned_inner_mm)
    measured_thickness = _thickness(measured, measured_inner_mm)
    extra = last.extra_passes or 0
    compositions = [r.composition_error_pct for r in rows if r.composition_error_pct is not None]
    return LayerReport(
        step=first.step, layer=first.layer, name=last.layer_name or f"layer {first.layer + 1}",
        passes=len(rows), planned_passes=last.planned_passes, extra_passes=extra,
        complete=last.planned_passes is not None and len(rows) >= last.planned_passes + extra,
        planned_boundary_mm=planned, measured_boundary_mm=measured,
        boundary_source=last.diameter_source,
        boundary_error_mm=_round(_minus(measured, planned), 3),
        boundary_error_pct=_error_pct(measured, planned),
        planned_thickness_mm=_round(planned_thickness, 3),
        measured_thickness_mm=_round(measured_thickness, 3),
        thickness_error_pct=_error_pct(measured_thickness, planned_thickness),
        sicl4_scale=Span.of(r.sicl4_scale for r in rows),
        dopant_scale=Span.of(_dopant_scale(r) for r in rows),
        traverse_mm_min=Span.of((r.traverse_mm_min for r in rows), digits=1),
        limited_passes=sum(1 for r in rows if r.limited),
        largest_step_pct=_largest_step(rows),
        composition_error_mean_pct=_round(_mean(compositions), 2),
        composition_error_worst_pct=_round(_worst(compositions), 2),
    )


def _glass_factor(record: PassRecord) -> float | None:
    """The glass a pass was asked for against the plan: more SiCl4, or a slower pass."""
    scale, speed, planned = (record.sicl4_scale, record.traverse_mm_min,
                             record.planned_traverse_mm_min)
    if scale is None or not speed or not planned:
        return None
    return scale * planned / speed


def _largest_step(rows: list[PassRecord]) -> float | None:
    factors = [f for f in (_glass_factor(r) for r in rows) if f is not None]
    steps = [abs(b - a) * 100 for a, b in itertools.pairwise(factors)]
    return _round(max(steps), 2) if steps else None


def _dopant_scale(record: PassRecord) -> float | None:
    planned = record.planned_dopant_slpm
    if record.dopant_slpm is None or planned is None or planned <= 0:
        return None
    return record.dopant_slpm / planned


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _worst(values: list[float]) -> float | None:
    """The largest in size, with its sign."""
    if not values:
        return None
    high, low = max(values), min(values)
    return high if high >= -low else low


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _thickness(outer_mm: float | None, inner_mm: float | None) -> float | None:
    difference = _minus(outer_mm, inner_mm)
    return None if difference is None else difference / 2


def _error_pct(measured: float | None, planned: float | None) -> float | None:
    if measured is None or planned is None or planned == 0:
        return None
    return round((measured - planned) / planned * 100, 2)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
