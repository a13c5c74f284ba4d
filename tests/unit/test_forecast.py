"""The forecast from the process model: domain.md's nominal run and the consumption tally."""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.config.line import load_line_config
from controller.recipes import process_model
from controller.recipes.forecast import Forecast, forecast
from controller.recipes.loading import load_recipe, parse_recipe
from controller.recipes.planning import plan_from_recipe
from controller.recipes.recipe import Recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
LINE = load_line_config()


def predict(recipe: Recipe, line: Any = None, efficiency: float = 0.5) -> Forecast:
    """The forecast reads the Plan, as the executor does: the only reading of a recipe."""
    line = line or LINE
    return forecast(plan_from_recipe(recipe, line), line, efficiency)


NOMINAL_LAYER: dict[str, Any] = {
    "passes": 100,
    "power_kw": 50,
    "o2_slpm": 80,
    "n2_slpm": 30,
    "sicl4_g_min": 20,
    "traverse_mm_min": 150,
    "spindle_rpm": 30,
    "coil_gap_mm": 30,
}
NOMINAL: dict[str, Any] = {
    "name": "nominal",
    "version": 1,
    "steps": [
        {"step": "purge", "duration_s": 60, "ar_slpm": 10, "n2_slpm": 30},
        {
            "step": "ignite",
            "power_kw": 12,
            "ar_slpm": 30,
            "n2_slpm": 30,
            "spindle_rpm": 30,
            "timeout_s": 30,
            "expected_duration_s": 8,
        },
        {"step": "ramp", "duration_s": 60, "power_kw": 50, "o2_slpm": 80, "n2_slpm": 30},
        {"step": "deposit", "layers": [NOMINAL_LAYER]},
        {"step": "dwell", "duration_s": 30},
        {"step": "cool_down", "power_ramp_down_s": 60, "duration_s": 300, "n2_slpm": 30},
    ],
}


def recipe_of(data: dict[str, Any]) -> Recipe:
    return parse_recipe(yaml.safe_dump(data, sort_keys=False), LINE)


def with_layers(*layers: dict[str, Any], target: float | None = None) -> Recipe:
    data = copy.deepcopy(NOMINAL)
    data["steps"][3]["layers"] = list(layers)
    if target is not None:
        data["target_diameter_mm"] = target
        # A target is only valid within the authority the layers grant the loop.
        for layer in data["steps"][3]["layers"]:
            layer.setdefault("sicl4_trim_pct", [-10, 10])
            layer.setdefault("traverse_trim_pct", [-10, 10])
    return recipe_of(data)


def test_nominal_run() -> None:
    result = predict(recipe_of(NOMINAL), LINE)
    (layer,) = result.layers
    assert layer.pass_duration_s == pytest.approx(240.0)  # 600 mm at 150 mm/min
    assert layer.duration_s / 3600 == pytest.approx(6.667, abs=0.001)
    assert result.final_diameter_mm == pytest.approx(47.6, abs=0.05)
    assert result.deposited_g == pytest.approx(0.5 * 20 * 0.354 * 400, rel=1e-9)  # 1416 g
    assert result.sicl4_g == pytest.approx(8000)
    assert result.passes == 100
    assert 6.7 < result.duration_h < 6.9  # the deposition plus a few minutes around it
    assert result.duration_s == pytest.approx(60 + 8 + 60 + 24000 + 30 + 360)
    assert result.target_reached is None


def test_per_step_durations() -> None:
    result = predict(recipe_of(NOMINAL), LINE)
    assert [s.kind for s in result.steps] == [
        "purge",
        "ignite",
        "ramp",
        "deposit",
        "dwell",
        "cool_down",
    ]
    # The ignite step counts its expected time, the cool-down its ramp down too.
    assert [s.duration_s for s in result.steps] == pytest.approx([60, 8, 60, 24000, 30, 360])


def test_gas_consumption() -> None:
    result = predict(recipe_of(NOMINAL), LINE)
    # Ar: purge 10 slpm x 1 min, ignite 30 x 8 s, the ramp from 30 to 0 over 1 min (mean 15).
    assert result.gas_l["Ar"] == pytest.approx(10 + 30 * 8 / 60 + 15)
    # O2: ramp 0 -> 80 over 1 min (mean 40), 400 min at 80, dwell 0.5 min at 80.
    assert result.gas_l["O2"] == pytest.approx(40 + 80 * 400 + 40)
    # N2: 30 slpm throughout.
    assert result.gas_l["N2"] == pytest.approx(30 * result.duration_s / 60)
    assert result.gas_l["SF6"] == 0


def test_dopant_consumption_per_layer() -> None:
    doped = {**NOMINAL_LAYER, "passes": 10, "dopant_slpm": 0.5}
    data = copy.deepcopy(NOMINAL)
    data["dopant_gas"] = "SF6"
    data["steps"][3]["layers"] = [{**NOMINAL_LAYER, "passes": 10}, doped]
    result = predict(recipe_of(data), LINE)
    assert [layer.dopant_l for layer in result.layers] == pytest.approx([0, 0.5 * 40])
    assert result.gas_l["SF6"] == pytest.approx(20)


def test_layers_chain_their_diameters() -> None:
    result = predict(
        with_layers({**NOMINAL_LAYER, "passes": 40}, {**NOMINAL_LAYER, "passes": 60}), LINE
    )
    first, second = result.layers
    assert first.start_diameter_mm == LINE.geometry.bait_rod_diameter_mm
    assert second.start_diameter_mm == first.end_diameter_mm
    # Growth adds cross-section: splitting the passes changes nothing.
    assert second.end_diameter_mm == pytest.approx(
        predict(recipe_of(NOMINAL), LINE).final_diameter_mm
    )
    assert result.pass_end_diameters_mm[39] == first.end_diameter_mm
    assert result.pass_end_diameters_mm[-1] == result.final_diameter_mm
    assert (first.field, second.field) == ("steps[3].layers[0]", "steps[3].layers[1]")


def test_stroke_override_sets_the_deposition_length() -> None:
    data = copy.deepcopy(NOMINAL)
    data["stroke"] = {"turning_point_a_mm": 450, "turning_point_b_mm": 750}
    result = predict(recipe_of(data), LINE)
    assert result.deposition_length_mm == 300
    assert result.layers[0].pass_duration_s == pytest.approx(120)
    # Half the glass over half the length: the same cross-section growth.
    assert result.final_diameter_mm == pytest.approx(
        predict(recipe_of(NOMINAL), LINE).final_diameter_mm
    )


def test_target_reached_or_not() -> None:
    assert predict(with_layers(NOMINAL_LAYER, target=47.5), LINE).target_reached is True
    assert predict(with_layers(NOMINAL_LAYER, target=48), LINE).target_reached is False
    assert predict(with_layers(NOMINAL_LAYER, target=48), LINE, efficiency=0.6).target_reached


def test_efficiency_must_be_a_fraction() -> None:
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="efficiency"):
            predict(recipe_of(NOMINAL), LINE, efficiency=bad)


def test_shipped_f_doped_cladding_forecast() -> None:
    result = predict(load_recipe(RECIPES / "f-doped-cladding.yaml", LINE), LINE)
    assert result.final_diameter_mm == pytest.approx(47.6, abs=0.05)
    assert result.target_reached is True
    assert sum(layer.duration_s for layer in result.layers) / 3600 == pytest.approx(6.667, abs=0.01)
    assert result.gas_l["SF6"] > 0


def test_smoke_test_is_short() -> None:
    result = predict(load_recipe(RECIPES / "smoke-test.yaml", LINE), LINE)
    # About a minute or less of wall time at --time-scale 200.
    assert result.duration_s / 200 < 60
    assert 1 <= result.passes <= 12


def test_text_report() -> None:
    text = predict(with_layers(NOMINAL_LAYER, target=47.5), LINE).to_text()
    for fragment in (
        "nominal v1",
        "steps[3].layers[0]",
        "6:40:00",
        "SiCl4           8000 g",
        "47.58 mm (target 47.5 mm: reached)",
        "O2 ",
        "deposited glass 1416 g",
    ):
        assert fragment in text


def test_json_report() -> None:
    report = json.loads(json.dumps(predict(with_layers(NOMINAL_LAYER, target=50), LINE).to_json()))
    assert report["recipe"] == {"name": "nominal", "version": 1}
    assert report["target_reached"] is False
    assert report["passes"] == 100
    assert report["layers"][0]["field"] == "steps[3].layers[0]"
    assert set(report["gas_l"]) == {"Ar", "O2", "N2", "SF6"}
    assert math.isclose(report["final_diameter_mm"], 47.58, abs_tol=0.01)


def test_efficiency_from_growth_inverts_the_model() -> None:
    dm = process_model.deposited_mass_g(0.42, 20, 240)
    grown = process_model.grown_diameter_mm(30, dm, 600)
    assert process_model.efficiency_from_growth(30, grown, 600, 20, 240) == pytest.approx(0.42)
    with pytest.raises(ValueError, match="SiCl4"):
        process_model.efficiency_from_growth(30, 31, 600, 0, 240)


def test_pass_duration() -> None:
    assert process_model.pass_duration_s(600, 150) == 240
    with pytest.raises(ValueError, match="traverse"):
        process_model.pass_duration_s(600, 0)


layers = st.fixed_dictionaries(
    {
        "passes": st.integers(1, 60),
        "sicl4_g_min": st.floats(1, 50),
        "traverse_mm_min": st.floats(50, 500),
    }
)


@settings(max_examples=40, deadline=None)
@given(layer=layers, extra=st.integers(1, 50), efficiency=st.floats(0.05, 1.0))
def test_final_diameter_grows_with_passes(
    layer: dict[str, Any], extra: int, efficiency: float
) -> None:
    fewer = predict(with_layers({**NOMINAL_LAYER, **layer}), LINE, efficiency)
    more_layer = {**NOMINAL_LAYER, **layer, "passes": layer["passes"] + extra}
    more = predict(with_layers(more_layer), LINE, efficiency)
    assert more.final_diameter_mm > fewer.final_diameter_mm
    assert more.deposited_g > fewer.deposited_g
    assert more.duration_s > fewer.duration_s
    diameters = more.pass_end_diameters_mm
    assert all(b > a for a, b in itertools.pairwise(diameters))


@settings(max_examples=40, deadline=None)
@given(layer=layers, low=st.floats(0.05, 0.5), high=st.floats(0.5, 1.0))
def test_final_diameter_grows_with_efficiency(
    layer: dict[str, Any], low: float, high: float
) -> None:
    recipe = with_layers({**NOMINAL_LAYER, **layer})
    assert (
        predict(recipe, LINE, high).final_diameter_mm
        >= predict(recipe, LINE, low).final_diameter_mm
    )


@settings(max_examples=40, deadline=None)
@given(layer=layers)
def test_forecast_mass_matches_the_diameter(layer: dict[str, Any]) -> None:
    result = predict(with_layers({**NOMINAL_LAYER, **layer}), LINE)
    mass = process_model.mass_for_diameter_g(
        result.start_diameter_mm, result.final_diameter_mm, result.deposition_length_mm
    )
    assert mass == pytest.approx(result.deposited_g, rel=1e-9)
