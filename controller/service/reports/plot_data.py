"""The report's plots as data: series over time from the recorded samples (power, flows,
spindle and traverse speed, diameter) and the diameter per pass against the plan, from the
recorded passes. JSON-ready: the HTML page embeds it and uPlot draws it in the browser."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.config.line import PRECURSORS, PROCESS_GASES
from controller.recipes.process_model import interpolated_boundaries_mm
from controller.records.schema import PassRecord

Sample = tuple[float, Mapping[str, Any]]
Pick = Callable[[Mapping[str, Any]], Any]

# Above this many samples the time plots show every n-th (a 7-hour run at 1 Hz is 25,000):
# enough for a page's width, and the page stays light. The CSV export has every sample.
MAX_PLOT_POINTS = 5000


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    values: list[float | None]
    dash: bool = False  # drawn dashed: a plan, not a measurement


@dataclass(frozen=True, slots=True)
class Plot:
    key: str  # the page's element id is "plot-<key>"
    title: str
    unit: str
    x: str  # "time" (Unix seconds) or "pass" (the pass's number in the run)
    series: list[Series] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(v is not None for s in self.series for v in s.values)


@dataclass(frozen=True, slots=True)
class PlotData:
    time: list[float]
    passes: list[int]
    plots: list[Plot]
    stride: int  # every stride-th sample is shown
    samples: int  # recorded

    def to_json(self) -> dict[str, Any]:
        return {
            "x": {"time": self.time, "pass": self.passes},
            "stride": self.stride,
            "samples": self.samples,
            "plots": [
                {"key": p.key, "title": p.title, "unit": p.unit, "x": p.x,
                 "series": [{"label": s.label, "values": s.values, "dash": s.dash}
                            for s in p.series]}
                for p in self.plots
            ],
        }


def plot_data(samples: Sequence[Sample], passes: Sequence[PassRecord]) -> PlotData:
    stride = max(1, math.ceil(len(samples) / MAX_PLOT_POINTS))
    shown = samples[::stride]
    mfcs = _mfc_names(shown)

    def plot(key: str, title: str, unit: str, picks: Sequence[tuple[str, Pick]]) -> Plot:
        return Plot(key, title, unit, "time",
                    [Series(label, [_number(pick(s)) for _t, s in shown]) for label, pick in picks])

    time_plots = [
        plot("power", "RF power", "kW", [
            ("forward", lambda s: _at(s, "rf", "forward_kw")),
            ("reflected", lambda s: _at(s, "rf", "reflected_kw")),
            ("setpoint", lambda s: _at(s, "rf", "setpoint_kw")),
        ]),
        plot("gases", "Process gases (mass flow)", "slpm",
             [(_gas_label(m), _flow(m)) for m in mfcs if m in PROCESS_GASES]),
        plot("precursors", "Precursors (mass flow)", "slpm",
             [(_gas_label(m), _flow(m)) for m in mfcs if m in PRECURSORS]),
        plot("spindle", "Spindle speed", "rpm",
             [("spindle", lambda s: _at(s, "axes", "spindle", "velocity"))]),
        plot("traverse", "Traverse speed (carriage, either way)", "mm/min",
             [("traverse", lambda s: _abs(_at(s, "axes", "carriage", "velocity")))]),
        plot("diameter", "Preform diameter (gauge)", "mm",
             [("diameter", _gauge_diameter)]),
    ]
    return PlotData(time=[t for t, _s in shown], passes=list(range(1, len(passes) + 1)),
                    plots=[*time_plots, diameter_per_pass(passes)], stride=stride,
                    samples=len(samples))


def diameter_per_pass(passes: Sequence[PassRecord]) -> Plot:
    """Each pass's measured diameter against the plan: where the plan put the preform after
    that pass of its layer, and the layer's planned outer boundary."""
    return Plot("per-pass", "Diameter per pass against the plan", "mm", "pass", [
        Series("measured", [p.diameter_mm for p in passes]),
        Series("plan", [planned_diameter_mm(p) for p in passes], dash=True),
        Series("layer boundary (plan)", [p.planned_boundary_mm for p in passes], dash=True),
    ])


def planned_diameter_mm(record: PassRecord) -> float | None:
    """Where the plan put the preform after this pass of its layer. A layer's passes lay down
    the same glass each, so its cross-section grows in equal steps from the layer below's
    planned boundary to its own (the same interpolation the planning uses between layers);
    an operator's extra pass is planned at the boundary. None for a pass recorded without the
    plan's figures (schema 1)."""
    inner, outer = record.planned_inner_mm, record.planned_boundary_mm
    planned, index = record.planned_passes, record.layer_pass
    if inner is None or outer is None or not planned or index is None:
        return None
    if index >= planned:
        return outer
    steps = interpolated_boundaries_mm(inner, [1.0] * planned, {planned - 1: outer},
                                       length_mm=1.0)
    return round(steps[index - 1], 4)


def _mfc_names(samples: Sequence[Sample]) -> list[str]:
    names: dict[str, None] = {}
    for _t, sample in samples:
        mfcs = sample.get("mfcs")
        if isinstance(mfcs, Mapping):
            names.update(dict.fromkeys(mfcs))
    return list(names)


def _gas_label(device: str) -> str:
    return device.removeprefix("mfc_")


def _flow(device: str) -> Pick:
    return lambda s: _at(s, "mfcs", device, "mass_slpm")


def _gauge_diameter(sample: Mapping[str, Any]) -> Any:
    return _at(sample, "gauge", "diameter_mm") if _at(sample, "gauge", "valid") else None


def _at(sample: Mapping[str, Any], *path: str) -> Any:
    value: Any = sample
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _abs(value: Any) -> Any:
    return abs(value) if isinstance(value, int | float) else None


def _number(value: Any) -> float | None:
    """A plottable number, else None (a gap): JSON has no NaN, a flag is not a reading."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
