"""The run report per layer (issue 9): recorded passes summed up per layer, each figure checked
against the passes fed in; the report's JSON and text carry them."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from controller.cli.records_commands import print_report, run_report
from controller.records.layer_report import LayerReport, Span, layer_reports
from controller.records.schema import (
    Outcome,
    PassRecord,
    RunDetail,
    RunSummary,
    to_plain,
)

BAIT_MM = 30.0


def a_pass(layer: int, layer_pass: int, diameter: float | None, **fields: Any) -> PassRecord:
    """A pass as ``CurrentRun`` records it; ``fields`` override the defaults."""
    values: dict[str, Any] = {
        "step": 3, "layer_name": ("inner", "outer")[layer], "layer_pass": layer_pass,
        "planned_passes": 3, "extra_passes": 0, "diameter_source": "gauge",
        "planned_boundary_mm": (31.0, 32.0)[layer],
        "planned_inner_mm": (BAIT_MM, 31.0)[layer], "start_diameter_mm": 30.1,
        "sicl4_g_min": 60.0, "sicl4_scale": 1.0, "dopant_slpm": 0.5,
        "planned_dopant_slpm": 0.5, "traverse_mm_min": 330.0,
        "planned_traverse_mm_min": 330.0, "efficiency": 0.5, "wanted_factor": 1.0,
        "limited": False, "composition_error_pct": 0.0,
    } | fields
    return PassRecord(layer=layer, pass_index=0, diameter_mm=diameter, deposited_g=1.0,
                      duration_s=60.0, started_at=0.0, ended_at=60.0, **values)


def two_layers() -> list[PassRecord]:
    """Inner: three passes, the loop scaling SiCl4 up (the dopant with it), bound by the
    trims once; outer: three passes, the last read from the forecast (the gauge lost)."""
    return [
        a_pass(0, 1, 30.4, sicl4_scale=1.0, dopant_slpm=0.5, composition_error_pct=0.4,
               traverse_mm_min=330.0),
        a_pass(0, 2, 30.7, sicl4_scale=1.05, dopant_slpm=0.525, composition_error_pct=-1.2,
               traverse_mm_min=320.0),
        a_pass(0, 3, 30.95, sicl4_scale=1.1, dopant_slpm=0.55, composition_error_pct=0.2,
               traverse_mm_min=310.0, limited=True),
        a_pass(1, 1, 31.3, dopant_slpm=0.0, planned_dopant_slpm=0.0,
               composition_error_pct=None, sicl4_scale=0.95),
        a_pass(1, 2, 31.7, dopant_slpm=0.0, planned_dopant_slpm=0.0,
               composition_error_pct=None, sicl4_scale=0.9, limited=True),
        a_pass(1, 3, 32.08, dopant_slpm=0.0, planned_dopant_slpm=0.0,
               composition_error_pct=None, sicl4_scale=0.9, limited=True,
               diameter_source="forecast"),
    ]


def test_each_layer_boundary_thickness_and_passes() -> None:
    inner, outer = layer_reports(two_layers())
    assert (inner.name, inner.step, inner.layer) == ("inner", 3, 0)
    assert (inner.passes, inner.planned_passes, inner.extra_passes, inner.complete) == (
        3, 3, 0, True)
    # The boundary is the layer's last pass, with its source.
    assert (inner.planned_boundary_mm, inner.measured_boundary_mm) == (31.0, 30.95)
    assert inner.boundary_source == "gauge"
    assert inner.boundary_error_mm == pytest.approx(-0.05)
    assert inner.boundary_error_pct == pytest.approx(-0.05 / 31.0 * 100, abs=0.005)
    # Radial thickness: half the diameters' difference; the first layer's inner boundary
    # measured is the rod when deposition began, the plan's is the bait rod.
    assert inner.planned_thickness_mm == pytest.approx(0.5)
    assert inner.measured_thickness_mm == pytest.approx((30.95 - 30.1) / 2)
    assert inner.thickness_error_pct == pytest.approx((0.425 / 0.5 - 1) * 100, abs=0.005)
    # The next layer's inner boundary is what the layer below reached, not its plan.
    assert outer.boundary_source == "forecast"
    assert outer.measured_boundary_mm == 32.08
    assert outer.boundary_error_mm == pytest.approx(0.08)
    assert outer.planned_thickness_mm == pytest.approx(0.5)
    assert outer.measured_thickness_mm == pytest.approx((32.08 - 30.95) / 2)
    assert outer.thickness_error_pct == pytest.approx((0.565 / 0.5 - 1) * 100, abs=0.005)


def test_what_the_loop_used_and_the_composition_it_held() -> None:
    inner, outer = layer_reports(two_layers())
    assert inner.sicl4_scale == Span(1.05, 1.0, 1.1)
    assert inner.dopant_scale == Span(1.05, 1.0, 1.1)  # the dopant followed the SiCl4
    assert inner.traverse_mm_min == Span(320.0, 310.0, 330.0)
    assert inner.limited_passes == 1
    # The largest change of glass asked per pass: 1.0 -> 1.05 x 330/320 -> 1.1 x 330/310.
    steps = (1.05 * 330 / 320 - 1.0, 1.1 * 330 / 310 - 1.05 * 330 / 320)
    assert inner.largest_step_pct == pytest.approx(max(steps) * 100, abs=0.01)
    assert outer.largest_step_pct == pytest.approx(5.0, abs=0.01)  # 0.95 -> 0.9
    # Pass-weighted mean and the worst in size, with its sign.
    assert inner.composition_error_mean_pct == pytest.approx((0.4 - 1.2 + 0.2) / 3, abs=0.005)
    assert inner.composition_error_worst_pct == -1.2
    # No dopant: no dopant scale and no composition to hold.
    assert outer.sicl4_scale == Span(pytest.approx(0.9167), 0.9, 0.95)
    assert outer.dopant_scale is None
    assert outer.limited_passes == 2
    assert (outer.composition_error_mean_pct, outer.composition_error_worst_pct) == (None, None)


def test_extra_passes_and_an_unfinished_layer() -> None:
    rows = [a_pass(0, n, 30.0 + 0.2 * n, planned_passes=2, extra_passes=0 if n < 2 else 1)
            for n in (1, 2, 3)]
    rows += [a_pass(1, 1, 30.9, planned_passes=2)]  # stopped after one pass of two
    inner, outer = layer_reports(rows)
    assert (inner.passes, inner.planned_passes, inner.extra_passes, inner.complete) == (
        3, 2, 1, True)
    assert (outer.passes, outer.planned_passes, outer.complete) == (1, 2, False)


def test_layers_of_two_deposit_steps_stay_apart() -> None:
    rows = [a_pass(0, 1, 30.5, step=3), a_pass(0, 1, 31.2, step=5, planned_inner_mm=31.0,
                                                  planned_boundary_mm=31.5)]
    first, second = layer_reports(rows)
    assert (first.step, second.step) == (3, 5)
    assert second.measured_thickness_mm == pytest.approx((31.2 - 30.5) / 2)
    assert second.planned_thickness_mm == pytest.approx(0.25)


def test_passes_recorded_before_the_columns_existed() -> None:
    """A run of schema version 1: its layers are listed, their figures unknown."""
    rows = [PassRecord(0, 1, 30.3, 1.0, 60.0, 0.0, 60.0),
            PassRecord(0, 2, 30.6, 1.0, 60.0, 60.0, 120.0),
            PassRecord(1, 3, 30.9, 1.0, 60.0, 120.0, 180.0)]
    first, second = layer_reports(rows)
    assert (first.name, first.passes, second.name, second.passes) == (
        "layer 1", 2, "layer 2", 1)
    assert first.measured_boundary_mm == 30.6
    assert first.measured_thickness_mm is None  # no start diameter recorded
    assert second.measured_thickness_mm == pytest.approx(0.15)  # over the layer below
    assert first.boundary_error_mm is None and first.sicl4_scale is None
    assert (first.limited_passes, first.complete, first.extra_passes) == (0, False, 0)


def _detail(passes: list[PassRecord]) -> RunDetail:
    run = RunSummary(id=7, recipe_name="layers", recipe_hash="ab" * 32, line="line-sim",
                     machine="lathe-1", operator="alice", preform_serial="P-1",
                     bait_rod_lot=None, precursor_lot=None, started_at=1000.0,
                     ended_at=2000.0, outcome=Outcome.COMPLETE)
    return RunDetail(run=run, recipe_text="name: layers\n", passes=passes)


def test_the_report_carries_the_layers_in_json_and_text(
        capsys: pytest.CaptureFixture[str]) -> None:
    report = run_report(_detail(two_layers()))
    assert report["passes"] == 6 and report["final_diameter_mm"] == 32.08  # kept
    layers = json.loads(json.dumps(report))["layers"]
    assert layers == to_plain(layer_reports(two_layers()))
    assert [x["name"] for x in layers] == ["inner", "outer"]
    assert layers[0]["sicl4_scale"] == {"mean": 1.05, "low": 1.0, "high": 1.1}
    print_report(report)
    text = capsys.readouterr().out
    assert "layers, geometry" in text and "layers, process" in text
    inner = next(line for line in text.splitlines() if line.strip().startswith("inner")
                 and "3/3+0" in line)
    assert "31.000" in inner and "30.950" in inner and "gauge" in inner and "-0.050" in inner
    process = [line for line in text.splitlines() if line.strip().startswith("inner")][1]
    assert "1.050 (1.000-1.100)" in process and "310.0-330.0" in process
    assert "1/3" in process and "-1.20" in process
    assert "passes:" in text  # the pass table is still there


def test_an_unfinished_layer_is_marked(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [replace(p, planned_passes=4) if p.layer == 1 else p for p in two_layers()]
    print_report(run_report(_detail(rows)))
    text = capsys.readouterr().out
    assert "outer*" in text and "did not run all its passes" in text


def test_a_layer_report_is_plain_data() -> None:
    (report,) = layer_reports([a_pass(0, 1, 30.5)])
    assert isinstance(report, LayerReport)
    plain = to_plain(report)
    assert plain["traverse_mm_min"] == {"mean": 330.0, "low": 330.0, "high": 330.0}
    assert json.loads(json.dumps(plain)) == plain
