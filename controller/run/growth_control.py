"""The closed loop over the glass (domain.md rule 12), as pure arithmetic the executor calls
at every pass boundary: how efficiently the glass is being laid down now, how much more each
remaining pass of the layer must lay to land its planned boundary, how that is split between
the SiCl4 flow (the dopant in ratio) and the traverse speed within the recipe's authority, and
what the run will end at if the loop has to run at its limits.

The glass offered is integrated from the measured SiCl4 flow over process time, and every
gauge reading is paired with the glass offered when it was taken: the estimate does not care
when a reading arrives relative to a turning point, which is what makes it the same at any
time scale."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from controller.recipes.authority import Authority
from controller.recipes.plan import LayerOp
from controller.recipes.process_model import (
    SIO2_PER_SICL4,
    deposited_mass_g,
    grown_diameter_mm,
    mass_for_diameter_g,
    pass_duration_s,
)

# The estimate looks back over this many passes' worth of glass: long enough to average the
# gauge's noise, short enough to see a change of efficiency within two passes.
WINDOW_PASSES = 1.5
OUTLOOK_WINDOW_PASSES = 1.0  # the outlook looks shorter: a drift announced within two passes
MAX_SAMPLES = 400
MIN_EVIDENCE_PASSES = 0.75  # the prior stands until this much glass has been offered


@dataclass(frozen=True)
class Sample:
    basis_g: float  # glass offered so far (at efficiency 1) when the reading was taken
    diameter_mm: float


class GrowthEstimator:
    """The deposition efficiency from the recent growth, and the diameter now."""

    def __init__(self, length_mm: float, prior_efficiency: float, *, resolution_mm: float,
                 basis_g: float = 0.0, diameter_mm: float | None = None) -> None:
        self.length_mm = length_mm
        self.prior = prior_efficiency
        self.resolution_mm = resolution_mm
        self.basis_g = basis_g
        self._samples: deque[Sample] = deque(maxlen=MAX_SAMPLES)
        if diameter_mm is not None:
            self._samples.append(Sample(basis_g, diameter_mm))
        self._estimate: float | None = None
        self._line: tuple[float, float] | None = None  # the fit: d^2 = a + b * basis

    def offer(self, sicl4_g_min: float, dt_s: float) -> None:
        """SiCl4 reached the torch for dt_s of process time (depositing)."""
        if sicl4_g_min > 0 and dt_s > 0:
            self.basis_g += sicl4_g_min * SIO2_PER_SICL4 * dt_s / 60.0

    def observe(self, diameter_mm: float, basis_g: float | None = None) -> None:
        """A fresh gauge reading, taken when ``basis_g`` had been offered (default: now)."""
        at = self.basis_g if basis_g is None else max(0.0, basis_g)
        if self._samples and at < self._samples[-1].basis_g:
            at = self._samples[-1].basis_g
        self._samples.append(Sample(at, diameter_mm))
        self._estimate = None
        self._line = None

    @property
    def last(self) -> Sample | None:
        return self._samples[-1] if self._samples else None

    def efficiency(self, pass_basis_g: float, window_passes: float = WINDOW_PASSES) -> float:
        """Least squares of the cross-section against the glass offered, over the last
        ``WINDOW_PASSES`` passes (extended back until the growth stands clear of the gauge's
        resolution); the prior until there is enough growth to tell."""
        if window_passes != WINDOW_PASSES:
            fitted = self._fit(pass_basis_g, window_passes, keep=False)
            return fitted if fitted is not None else self.efficiency(pass_basis_g)
        if self._estimate is None:
            self._estimate = self._fit(pass_basis_g, window_passes)
        return self._estimate if self._estimate is not None else self.prior

    def _fit(self, pass_basis_g: float, window_passes: float,
             *, keep: bool = True) -> float | None:
        samples = list(self._samples)
        if len(samples) < 2:
            return None
        latest = samples[-1]
        window = [s for s in samples if s.basis_g >= latest.basis_g - window_passes * pass_basis_g]
        start = len(samples) - len(window)
        while start > 0 and (len(window) < 2 or not self._clear(window)):
            start -= 1
            window.insert(0, samples[start])
        if len(window) < 2 or not self._clear(window):
            return None
        if window[-1].basis_g - window[0].basis_g < MIN_EVIDENCE_PASSES * pass_basis_g:
            return None  # too little glass yet to tell the efficiency from the gauge's noise
        xs = [s.basis_g for s in window]
        ys = [s.diameter_mm**2 for s in window]
        x_mean, y_mean = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - x_mean) ** 2 for x in xs)
        if sxx <= 0:
            return None
        slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True)) / sxx
        # d^2 grows by 4 m / (pi rho L) per gram laid down: the slope over that is the efficiency.
        per_gram = mass_for_diameter_g(0.0, 1.0, self.length_mm)  # grams per mm^2 of d^2
        efficiency = slope * per_gram
        if keep and 0.02 <= efficiency <= 1.0:
            self._line = (y_mean - slope * x_mean, slope)
        return max(0.02, min(1.0, efficiency))

    def _clear(self, window: list[Sample]) -> bool:
        growth = window[-1].diameter_mm - window[0].diameter_mm
        return growth >= 10 * self.resolution_mm

    def diameter_now(self, pass_basis_g: float) -> float | None:
        """The fitted line at the glass offered so far (the readings of the window averaged:
        finer than one reading's resolution); before there is a fit, the last reading grown
        by what was offered since at the estimated efficiency."""
        last = self.last
        if last is None:
            return None
        self.efficiency(pass_basis_g)
        if self._line is not None:
            intercept, slope = self._line
            return math.sqrt(max(0.0, intercept + slope * self.basis_g))
        grams = self.efficiency(pass_basis_g) * (self.basis_g - last.basis_g)
        return grown_diameter_mm(last.diameter_mm, max(0.0, grams), self.length_mm)


def pass_basis_g(layer: LayerOp, stroke_mm: float) -> float:
    """The glass one pass of the layer offers as planned (efficiency 1)."""
    duration = pass_duration_s(stroke_mm, layer.traverse_mm_min)
    return deposited_mass_g(1.0, layer.sicl4_g_min, duration)


@dataclass(frozen=True)
class Correction:
    wanted: float  # glass per pass relative to the plan that would land the boundary
    factor: float  # what the loop gives (within the authority and the per-pass step)
    sicl4_scale: float
    traverse_pct: float  # the total traverse trim: the operator's and the loop's
    limited: bool  # the authority could not give what was wanted
    step_limited: bool  # the change from the last pass was bounded


def correct(
    *,
    diameter_mm: float,
    boundary_mm: float,
    remaining_passes: int,
    efficiency: float,
    basis_per_pass_g: float,
    length_mm: float,
    authority: Authority,
    operator_traverse_pct: float,
    previous_factor: float,
    max_step: float,
    running_traverse_pct: float | None = None,
) -> Correction:
    """Spread what the layer still needs over its remaining passes: SiCl4 first (the dopant
    follows it), then the traverse speed; operator and loop share the traverse trim.

    With ``running_traverse_pct`` (the pass now running already has its speed: the drive
    takes a new one at its next reversal), the SiCl4 scale is this pass's at that speed and
    the traverse is for the passes after it."""
    needed = mass_for_diameter_g(diameter_mm, boundary_mm, length_mm)
    offered = efficiency * basis_per_pass_g * remaining_passes
    wanted = max(0.0, needed / offered) if offered > 0 else 1.0
    low, high = authority.mass_factor_range
    bounded = min(high, max(low, wanted))
    factor = min(previous_factor + max_step, max(previous_factor - max_step, bounded))
    s_low, s_high = authority.sicl4_scale
    t_low, t_high = authority.traverse_pct
    operator = min(t_high, max(t_low, operator_traverse_pct))
    # With the operator's traverse, the SiCl4 scale that gives the factor; then the traverse.
    scale = min(s_high, max(s_low, factor * (1 + operator / 100)))
    traverse = min(t_high, max(t_low, (scale / factor - 1) * 100)) if factor > 0 else t_high
    speed_now = traverse if running_traverse_pct is None else running_traverse_pct
    if running_traverse_pct is not None:
        scale = min(s_high, max(s_low, factor * (1 + running_traverse_pct / 100)))
    return Correction(
        wanted=wanted, factor=authority.mass_factor(scale, speed_now), sicl4_scale=scale,
        traverse_pct=traverse, limited=not math.isclose(bounded, wanted, rel_tol=1e-9),
        step_limited=not math.isclose(factor, bounded, rel_tol=1e-9),
    )


@dataclass(frozen=True)
class LayerOutlook:
    index: int  # the layer's index in its deposit step
    name: str
    planned_mm: float
    expected_mm: float
    extra_passes_needed: int  # to land the boundary at the loop's limit (0: none)


@dataclass(frozen=True)
class Outlook:
    """Where the run ends if the loop holds the rest of it at its limits."""

    layers: tuple[LayerOutlook, ...]

    @property
    def final_mm(self) -> float:
        return self.layers[-1].expected_mm

    def misses(self, *, final_pct: float, thickness_pct: float,
               inner_mm: float) -> tuple[LayerOutlook, ...]:
        """The layers whose outcome is off the plan: the last by more than ``final_pct`` of
        its diameter, any by more than ``thickness_pct`` of its planned radial thickness
        (``inner_mm``: the planned inner diameter of the first layer here)."""
        missed = []
        for o in self.layers:
            thickness = max(o.planned_mm - inner_mm, 1e-9)
            off = abs(o.expected_mm - o.planned_mm)
            last = o is self.layers[-1]
            if off > thickness * thickness_pct / 100 or (last and
                                                          off > o.planned_mm * final_pct / 100):
                missed.append(o)
            inner_mm = o.planned_mm
        return tuple(missed)


def outlook(
    *,
    diameter_mm: float,
    layers: list[tuple[int, LayerOp, int, Authority]],  # index, layer, passes remaining
    efficiency: float,
    length_mm: float,
) -> Outlook:
    result: list[LayerOutlook] = []
    for index, layer, remaining, authority in layers:
        basis = pass_basis_g(layer, length_mm)
        needed = mass_for_diameter_g(diameter_mm, layer.target_diameter_mm, length_mm)
        low, high = authority.mass_factor_range
        per_pass = efficiency * basis
        wanted = needed / (per_pass * remaining) if per_pass * remaining > 0 else math.inf
        factor = min(high, max(low, wanted))
        grown = grown_diameter_mm(diameter_mm, max(0.0, per_pass * factor * remaining),
                                  length_mm)
        extra = 0
        if wanted > high and per_pass * high > 0:
            extra = max(0, math.ceil(needed / (per_pass * high) - 1e-9) - remaining)
        result.append(LayerOutlook(index, layer.name, layer.target_diameter_mm, grown, extra))
        diameter_mm = grown
    return Outlook(tuple(result))
