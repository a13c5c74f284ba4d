"""Rule 12 over the wire: the closed loop lands every layer's boundary inside the recipe's
trims, holds the composition, says at once when the trims cannot do it, and makes the same
preform at x10 and at x200. The plant's truth is read at the carriage's reversals (the
preform's layers), never the controller's belief."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.recipes.loading import load_recipe
from controller.recipes.plan import LayerOp, Plan
from controller.recipes.planning import plan_from_recipe
from controller.safety.states import State
from tests.system.rig import RECIPES, Rig, line_rig

pytestmark = pytest.mark.slow

RECIPE = "layers"  # tests/system/recipes/layers.yaml: 6 + 7 + 7 passes
DRIFT_AT_PASS = 7  # a third of the way in
LAYER_THICKNESS_PCT = 3.0  # each layer's radial thickness against the plan
COMPOSITION_PCT = 1.0  # measured dopant/SiCl4 over a pass against the recipe's ratio
LAYER_FIRST_PASSES = (7, 14)  # the doped layers' first passes (6 + 7 + 7 passes)
EDGE_PCT_AT_X10 = 2.0
BOUNDARY_X10_X200 = 0.002  # a layer's outer diameter at x10 against x200
THICKNESS_X10_X200 = 0.02  # a layer's radial thickness at x10 against x200


@dataclass
class Preform:
    """The plant's truth pass by pass: the rod diameter at each reversal of the carriage, and
    the SiCl4 and dopant that reached the torch during each stroke (standard litres)."""

    reversals: list[float] = field(default_factory=list)
    strokes: list[tuple[float, float]] = field(default_factory=list)  # (SiCl4, dopant)
    passes: list[dict[str, Any]] = field(default_factory=list)
    final_mm: float = 0.0  # when the last pass was reported
    alarm_at: tuple[int, float | None] | None = None  # passes done, expected final diameter
    added: dict[int, int] = field(default_factory=dict)  # extra passes the operator added
    last_expected: float | None = None  # the alarm's latest expected final diameter
    drift_from: int = DRIFT_AT_PASS  # passes done when the drift was set


async def _run(tmp_path: Path, *, drift: float = 0.0, time_scale: float = 200.0,
               accept_extra: bool = False,
               recipe: str = RECIPE, abort_after: int | None = None,
               drift_at: int = DRIFT_AT_PASS) -> tuple[Rig, Preform, list[Any]]:
    preform = Preform()
    async with line_rig(tmp_path / f"run{drift:+.2f}x{time_scale:g}",
                        time_scale=time_scale) as rig:
        items = rig.sup.fanout.subscribe()
        alarms: list[Any] = []
        rig.sup.alarms.subscribe(alarms.append)
        assert (await rig.start(recipe)).accepted
        while not rig.sup.finished.is_set():
            try:
                item = await asyncio.wait_for(items.get(), 0.5)
            except TimeoutError:
                continue
            if item.get("kind") != "pass":
                continue
            preform.passes.append(item)
            preform.final_mm = rig.sim.plant.rod_diameter_mm
            if item["passes_done"] == abort_after:
                # Nothing left to measure: spare the test the rod's cooling (minutes at x10).
                assert (await rig.sup.command("abort", "alice", reason="test done")).accepted
                break
            if item["passes_done"] == drift_at:
                # Under load this item can arrive after the next pass began: the drift dates
                # from the pass the executor is on when it is set.
                executor = rig.sup.executor
                preform.drift_from = executor.cursor.passes_done if executor else drift_at
                rig.sim.plant.efficiency_drift = drift
            alarm = rig.sup.alarms.status("growth_out_of_authority")
            if alarm.condition and preform.alarm_at is None:
                preform.alarm_at = (item["passes_done"], alarm.value)
                # What the operator sees: the alarm with the final diameter it expects.
                shown = {a["id"]: a["value"] for a in rig.sup.status()["alarms"]}
                assert shown["growth_out_of_authority"] == alarm.value
            if alarm.condition:
                preform.last_expected = alarm.value
            executor = rig.sup.executor
            if accept_extra and alarm.condition and executor is not None and executor.outlook:
                # The operator takes what the outlook proposes, layer by layer, by command.
                for layer in executor.outlook.layers:
                    wanted = layer.extra_passes_needed
                    if wanted > 0 and rig.sup.commands.add_passes_refusal(
                            layer.index, wanted) is None:
                        rig.sup.commands.add_passes(layer.index, wanted, "alice")
                        preform.added[layer.index] = preform.added.get(layer.index, 0) + wanted
        expected = State.COMPLETE if abort_after is None else State.ABORTED
        await rig.wait_state(expected, timeout_s=60)
        # The plant's own record of each stroke: load on this machine cannot blur it.
        preform.reversals = [stroke.diameter_mm for stroke in rig.sim.plant.strokes]
        preform.strokes = [(stroke.sicl4_l, stroke.dopant_l) for stroke in rig.sim.plant.strokes]
        return rig, preform, alarms


def _layer_boundaries(preform: Preform, final_mm: float) -> list[float]:
    """The plant's diameter at the end of each layer: its last pass's reversal (the last
    pass ends with the carriage stopping, not reversing: the final diameter)."""
    ends: list[float] = []
    for index, item in enumerate(preform.passes):
        if index + 1 == len(preform.passes):
            ends.append(final_mm)
        elif preform.passes[index + 1]["layer"] != item["layer"]:
            ends.append(preform.reversals[index])
    return ends


def plan_of(rig: Rig, recipe: str | Path = RECIPE) -> Plan:
    path = recipe if isinstance(recipe, Path) else RECIPES / f"{recipe}.yaml"
    return plan_from_recipe(load_recipe(path, rig.line), rig.line)


def _layers(plan: Plan) -> list[LayerOp]:
    return [layer for op in plan.deposit_steps for layer in op.layers]


def _composition_errors(preform: Preform, plan: Plan) -> list[tuple[int, float]]:
    """Per pass: the dopant-to-SiCl4 ratio that reached the torch against the recipe's (%)."""
    layers = _layers(plan)
    errors = []
    for item, (sicl4_l, dopant_l) in zip(preform.passes, preform.strokes, strict=False):
        recipe_ratio = layers[item["layer"]].dopant_per_sicl4
        if recipe_ratio > 0 and sicl4_l > 0:
            errors.append((item["passes_done"], (dopant_l / sicl4_l / recipe_ratio - 1) * 100))
    return errors


def _planned(rig: Rig, recipe: str | Path = RECIPE) -> list[float]:
    return [layer.target_diameter_mm for layer in _layers(plan_of(rig, recipe))]


def _thickness_errors(planned: list[float], measured: list[float], start: float) -> list[float]:
    errors = []
    inner_plan, inner_meas = start, start
    for plan_mm, meas_mm in zip(planned, measured, strict=True):
        errors.append(((meas_mm - inner_meas) / (plan_mm - inner_plan) - 1) * 100)
        inner_plan, inner_meas = plan_mm, meas_mm
    return errors


@pytest.mark.parametrize("drift", [-0.12, 0.15])
async def test_a_drift_inside_the_trims_lands_every_layer(tmp_path: Path, drift: float) -> None:
    rig, preform, _ = await _run(tmp_path, drift=drift)
    planned = _planned(rig)
    final = rig.sim.plant.rod_diameter_mm
    measured = _layer_boundaries(preform, final)
    errors = _thickness_errors(planned, measured, rig.line.geometry.bait_rod_diameter_mm)
    assert all(abs(e) <= LAYER_THICKNESS_PCT for e in errors), (errors, planned, measured)
    assert abs(final - planned[-1]) / planned[-1] <= 0.005, (final, planned)
    # Nothing left the recipe's trims; the dopant followed the SiCl4.
    for item in preform.passes:
        assert 0.9 - 1e-6 <= item["sicl4_scale"] <= 1.1 + 1e-6, item
        assert 330 * 0.9 - 0.01 <= item["traverse_mm_min"] <= 330 * 1.1 + 0.01, item
        layer_dopant = (0.2, 0.5, 0.8)[item["layer"]]
        assert item["dopant_slpm"] == pytest.approx(layer_dopant * item["sicl4_scale"],
                                                    rel=1e-3, abs=1e-4)
    # The glass's composition: at x200 a tick of the simulator is two process seconds, so
    # the passes where the flows change (a layer's first and last, the run's first) are
    # held to 10 %; the others to 1 % (at x10 every pass is, below).
    for passes_done, error in _composition_errors(preform, plan_of(rig)):
        edge = passes_done in (1, 6, 7, 13, 14)
        assert abs(error) <= (10.0 if edge else COMPOSITION_PCT), (passes_done, error)
    # The correction follows the drift: less efficient glass, more glass asked of each pass.
    late = [p["sicl4_scale"] / (p["traverse_mm_min"] / 330) for p in preform.passes[-5:]]
    assert (min(late) > 1.05) if drift < 0 else (max(late) < 0.95), late


async def test_without_correction_the_same_drift_misses(tmp_path: Path) -> None:
    """The control case: the same recipe with no trims (no authority, no target) against the
    same -12 % drift misses its planned layers and final diameter, so the test above proves the
    loop, not the plant."""
    text = (RECIPES / f"{RECIPE}.yaml").read_text()
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(text.replace("name: layers", "name: layers-fixed")
                     .replace("target_diameter_mm: 35.6\n", "")
                     .replace("sicl4_trim_pct: [-10, 10], traverse_trim_pct: [-10, 10], ", ""))
    rig, preform, _ = await _run(tmp_path, drift=-0.12, recipe=str(fixed))
    assert all(p["sicl4_scale"] == 1.0 for p in preform.passes)
    planned = _planned(rig, fixed)
    final = rig.sim.plant.rod_diameter_mm
    errors = _thickness_errors(planned, _layer_boundaries(preform, final),
                               rig.line.geometry.bait_rod_diameter_mm)
    assert min(errors[1:]) < -LAYER_THICKNESS_PCT, errors
    assert (planned[-1] - final) / planned[-1] > 0.005, (final, planned)


@pytest.mark.timeout(600)  # 20 passes of 55 s at x10: about two minutes of wall time
async def test_the_same_preform_at_x10_and_at_x200(tmp_path: Path) -> None:
    """Fidelity at any time scale: the turning points cost no round trip and the plant
    integrates at a fixed step, so the loop has nothing to correct at either scale."""
    runs = {}
    for scale in (10.0, 200.0):
        rig, preform, _ = await _run(tmp_path, time_scale=scale, abort_after=20)
        start = rig.line.geometry.bait_rod_diameter_mm
        # One record per pass; the last pass's is taken where the carriage stops. What the
        # torch lays after that, until the controller sees the stop and the abort closes the
        # precursors, is the controller's latency in process time: 20 times longer at x200.
        assert len(preform.reversals) == 20, preform.reversals
        layers = [preform.reversals[5], preform.reversals[12], preform.reversals[19]]
        thickness = [b - a for a, b in zip([start, *layers[:-1]], layers, strict=True)]
        scales = [p["sicl4_scale"] for p in preform.passes]
        composition = _composition_errors(preform, plan_of(rig))
        runs[scale] = (layers, thickness, sum(scales) / len(scales), composition)
    (slow_ends, slow, slow_scale, slow_comp) = runs[10.0]
    (fast_ends, fast, fast_scale, _) = runs[200.0]
    # The loop aims at each layer's boundary; between boundaries it corrects once a pass, and
    # at x200 a pass's gauge reading is 20 times older in process time, so the passes of one
    # run scatter more than the other's (+-3 % against +-1 %). The boundaries are held to the
    # dry run's bar, 0.2 % (worst seen 0.09 %); a thickness, the difference of two boundaries,
    # to 2 % (worst seen 1.2 %).
    for a, b in zip(slow_ends, fast_ends, strict=True):
        assert abs(a / b - 1) <= BOUNDARY_X10_X200, (slow_ends, fast_ends)
    for a, b in zip(slow, fast, strict=True):
        assert abs(a / b - 1) <= THICKNESS_X10_X200, (slow, fast)
    assert abs(slow_scale - 1) <= 0.02 and abs(fast_scale - 1) <= 0.02, (slow_scale, fast_scale)
    # At x10 a tick is 0.1 process second: every pass's composition holds to 1 %, but the
    # first pass of a layer, whose new dopant setpoint is written once the controller has
    # seen the reversal (a carriage poll and a precursor-bus write: 60-100 ms of wall time,
    # 0.6-1 process s of a 55 s pass at x10, with the previous layer's ratio, 0.4 of the
    # new one): about 1 %, held to 2 %.
    off = [(passes_done, error) for passes_done, error in slow_comp
           if abs(error) > (EDGE_PCT_AT_X10 if passes_done in LAYER_FIRST_PASSES
                            else COMPOSITION_PCT)]
    assert not off, (off, len(slow_comp))


def _within_trims(preform: Preform) -> None:
    for item in preform.passes:
        assert 0.9 - 1e-6 <= item["sicl4_scale"] <= 1.1 + 1e-6, item
        assert 330 * 0.9 - 0.01 <= item["traverse_mm_min"] <= 330 * 1.1 + 0.01, item


@pytest.mark.parametrize("drift", [-0.2, -0.4])
async def test_a_drift_beyond_the_trims_is_announced_at_once(tmp_path: Path,
                                                             drift: float) -> None:
    rig, preform, _ = await _run(tmp_path, drift=drift)
    assert preform.alarm_at is not None, "no alarm"
    passes_done, expected_final = preform.alarm_at
    assert passes_done <= preform.drift_from + 2, (preform.alarm_at, preform.drift_from)
    planned = _planned(rig)
    assert expected_final is not None and expected_final < planned[-1], preform.alarm_at
    _within_trims(preform)
    # The run went on at the limit and ended short, where the alarm came to say.
    final = rig.sim.plant.rod_diameter_mm
    assert final < planned[-1] * (1 - 0.001), (final, planned)
    assert preform.last_expected is not None
    assert abs(final - preform.last_expected) <= 0.002 * planned[-1], (final, preform)


async def test_extra_passes_accepted_by_the_operator_reach_the_target(tmp_path: Path) -> None:
    rig, preform, _ = await _run(tmp_path, drift=-0.4, accept_extra=True)
    assert preform.added, "the outlook proposed no extra passes"
    planned = _planned(rig)
    final = rig.sim.plant.rod_diameter_mm
    assert abs(final - planned[-1]) / planned[-1] <= 0.005, (final, planned, preform.added)
    assert len(preform.passes) == 20 + sum(preform.added.values())
    _within_trims(preform)
    assert not rig.sup.alarms.status("growth_out_of_authority").condition
