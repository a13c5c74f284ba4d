"""The Plan is the only reading of a recipe: it carries every field the executor and the
forecast need, and the plasma's state before each step is computed once, from the recipe."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from controller.config.line import load_line_config
from controller.recipes.authority import layer_authority
from controller.recipes.loading import parse_recipe
from controller.recipes.plan import DepositOp, IgniteOp, PurgeOp
from controller.recipes.planning import plan_from_recipe
from controller.recipes.process_model import grown_diameter_mm
from controller.recipes.recipe import RecipeError
from tests.unit.test_forecast import NOMINAL

LINE = load_line_config()


def plan_of(data: dict[str, Any]) -> Any:
    return plan_from_recipe(parse_recipe(yaml.safe_dump(data, sort_keys=False), LINE), LINE)


def test_the_plasma_is_expected_only_where_the_recipe_keeps_it_lit() -> None:
    plan = plan_of(NOMINAL)
    kinds = [plan.kind(op) for op in plan.steps]
    assert kinds == ["purge", "ignite", "ramp", "deposit", "dwell", "cool_down"]
    assert [plan.needs_plasma(i) for i in range(len(plan.steps))] == [
        False, False, True, True, True, False]
    assert isinstance(plan.ignition_before(3), IgniteOp)


def test_after_a_ramp_to_zero_a_purge_does_not_reignite() -> None:
    """The executor used to count any earlier ignition: resuming at this purge re-lit."""
    data = copy.deepcopy(NOMINAL)
    steps = data["steps"]
    steps.insert(4, {"step": "ramp", "duration_s": 30, "power_kw": 0, "n2_slpm": 30})
    steps.insert(5, {"step": "purge", "duration_s": 60, "ar_slpm": 10, "n2_slpm": 30})
    plan = plan_of(data)
    purge = 5
    assert isinstance(plan.steps[purge], PurgeOp)
    assert not plan.needs_plasma(purge)
    assert plan.ignition_before(purge) is None


def test_every_layer_field_is_carried_trims_included() -> None:
    data = copy.deepcopy(NOMINAL)
    data["steps"][3]["layers"][0].update({"label": "core", "sicl4_trim_pct": [-10, 10],
                                          "traverse_trim_pct": [-5, 5],
                                          "power_trim_kw": [-2, 2]})
    (deposit,) = [op for op in plan_of(data).steps if isinstance(op, DepositOp)]
    layer = deposit.layers[0]
    assert layer.name == "core"
    assert layer.sicl4_trim_pct == (-10, 10)
    assert layer.traverse_trim_pct == (-5, 5)
    assert layer.power_trim_kw == (-2, 2)


def three_layers(target: float | None = None, **layer_changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(NOMINAL)
    base = data["steps"][3]["layers"][0]
    layers = []
    for passes, dopant in ((30, 0.2), (40, 0.5), (30, 0.8)):
        layer = {**base, "passes": passes, "dopant_slpm": dopant,
                 "sicl4_trim_pct": [-10, 10], "traverse_trim_pct": [-10, 10], **layer_changes}
        layers.append(layer)
    data["steps"][3]["layers"] = layers
    data["dopant_gas"] = "SF6"
    if target is not None:
        data["target_diameter_mm"] = target
    return data


def boundaries(data: dict[str, Any]) -> list[float]:
    (deposit,) = plan_of(data).deposit_steps
    return [layer.target_diameter_mm for layer in deposit.layers]


def test_each_layer_carries_its_planned_boundary_at_the_nominal_efficiency() -> None:
    # 0.5 x 20 g/min x 0.354 x 4 min = 14.16 g a pass over 600 mm; from a 30 mm bait rod.
    inner, middle, outer = boundaries(three_layers())
    assert inner == pytest.approx(grown_diameter_mm(30, 30 * 14.16, 600))
    assert middle == pytest.approx(grown_diameter_mm(inner, 40 * 14.16, 600))
    assert outer == pytest.approx(grown_diameter_mm(middle, 30 * 14.16, 600))


def test_the_recipe_target_scales_the_boundaries_in_proportion_to_the_glass() -> None:
    nominal = boundaries(three_layers())
    scaled = boundaries(three_layers(target=47.0))
    assert scaled[-1] == pytest.approx(47.0)
    for planned, free in zip(scaled, nominal, strict=True):
        share = (free**2 - 30**2) / (nominal[-1] ** 2 - 30**2)
        assert planned**2 == pytest.approx(30**2 + share * (47.0**2 - 30**2))


def test_an_explicit_layer_boundary_anchors_the_layers_around_it() -> None:
    data = three_layers(target=47.5)
    data["steps"][3]["layers"][1]["target_diameter_mm"] = 43.5
    inner, middle, outer = boundaries(data)
    assert (middle, outer) == (pytest.approx(43.5), pytest.approx(47.5))
    nominal = boundaries(three_layers())
    share = (nominal[0] ** 2 - 30**2) / (nominal[1] ** 2 - 30**2)
    assert inner**2 == pytest.approx(30**2 + share * (43.5**2 - 30**2))


def test_the_plan_carries_the_trims_extra_passes_and_composition() -> None:
    data = three_layers()
    data["steps"][3]["layers"][2]["extra_passes"] = [0, 4]
    (deposit,) = plan_of(data).deposit_steps
    outer = deposit.layers[2]
    assert outer.sicl4_trim_pct == (-10, 10) and outer.traverse_trim_pct == (-10, 10)
    assert outer.extra_passes_max == 4 and deposit.layers[0].extra_passes_max == 0
    assert outer.sicl4_slpm == pytest.approx(LINE.mfc("mfc_sicl4").slpm_for(20))
    assert outer.dopant_per_sicl4 == pytest.approx(0.8 / outer.sicl4_slpm)


def test_the_authority_is_the_layers_trims_narrowed_by_the_line() -> None:
    data = three_layers(sicl4_trim_pct=[-10, 40])
    layer = plan_of(data).deposit_steps[0].layers[0]
    authority = layer_authority(layer, LINE)
    sicl4 = LINE.mfc("mfc_sicl4")
    # 80 slpm of O2 oxidises 80 slpm of SiCl4; the MFC's full scale binds first here.
    bound = min(1.4, sicl4.full_scale_slpm / layer.sicl4_slpm, 80 / layer.sicl4_slpm,
                LINE.supervision.diameter_correction_limits[1],
                LINE.mfc("mfc_dopant").full_scale_slpm / layer.dopant_slpm)
    assert authority.sicl4_scale == (pytest.approx(0.9), pytest.approx(bound))
    assert authority.traverse_pct == (-10, 10)
    low, high = authority.mass_factor_range
    assert (low, high) == (pytest.approx(0.9 / 1.1), pytest.approx(bound / 0.9))


def test_a_boundary_the_trims_cannot_reach_is_rejected_with_the_layer() -> None:
    data = three_layers(target=47.5)
    data["steps"][3]["layers"][0]["target_diameter_mm"] = 40.0  # 1.71x its glass
    with pytest.raises(RecipeError) as caught:
        plan_of(data)
    issue = caught.value.errors[0]  # (the middle layer's share is then too small as well)
    assert issue.field == "steps[3].layers[0]"
    assert "needs 1.71x" in issue.reason and "allow 0.82-1.22x" in issue.reason


def test_extra_passes_are_from_zero() -> None:
    data = three_layers()
    data["steps"][3]["layers"][0]["extra_passes"] = [1, 4]
    with pytest.raises(RecipeError) as caught:
        plan_of(data)
    assert "extra_passes" in caught.value.errors[0].field
