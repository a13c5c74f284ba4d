"""Recipe models and validation: one test per rule, each asserting the field path and reason."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.config.line import GeometryConfig, LineConfig, load_line_config
from controller.recipes.checks import check_recipe
from controller.recipes.loading import load_recipe, parse_recipe
from controller.recipes.recipe import (
    STEP_KINDS,
    Recipe,
    RecipeError,
    RecipeIssue,
    format_recipe_error,
    recipe_hash,
    recipe_json_schema,
    turning_points_mm,
)

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
LINE = load_line_config()

BASE: dict[str, Any] = {
    "name": "unit",
    "version": 1,
    "dopant_gas": "SF6",
    "steps": [
        {"step": "purge", "duration_s": 30, "n2_slpm": 30},
        {
            "step": "ignite",
            "power_kw": 12,
            "ar_slpm": 30,
            "n2_slpm": 30,
            "spindle_rpm": 30,
            "timeout_s": 30,
        },
        {"step": "ramp", "duration_s": 60, "power_kw": 50, "o2_slpm": 80, "n2_slpm": 30},
        {
            "step": "deposit",
            "layers": [
                {
                    "passes": 2,
                    "power_kw": 50,
                    "o2_slpm": 80,
                    "n2_slpm": 30,
                    "sicl4_g_min": 20,
                    "traverse_mm_min": 150,
                    "spindle_rpm": 30,
                    "coil_gap_mm": 30,
                    "power_trim_kw": [-5, 5],
                    "traverse_trim_pct": [-10, 10],
                },
                {
                    "passes": 2,
                    "power_kw": 50,
                    "o2_slpm": 80,
                    "n2_slpm": 30,
                    "sicl4_g_min": 20,
                    "dopant_slpm": 0.5,
                    "traverse_mm_min": 150,
                    "spindle_rpm": 30,
                    "coil_gap_mm": 30,
                },
            ],
        },
        {"step": "dwell", "duration_s": 30},
        {"step": "cool_down", "duration_s": 300, "n2_slpm": 30},
    ],
}


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def errors_of(data: dict[str, Any], line: LineConfig = LINE) -> list[RecipeIssue]:
    with pytest.raises(RecipeError) as info:
        parse_recipe(yaml.safe_dump(data, sort_keys=False), line, Path("recipes/x.yaml"))
    assert info.value.path == Path("recipes/x.yaml")
    return info.value.errors


def assert_issue(issues: list[RecipeIssue], field: str, *words: str) -> RecipeIssue:
    matching = [i for i in issues if i.field == field and all(w in i.reason for w in words)]
    assert matching, f"no issue at {field} with {words}: {issues}"
    return matching[0]


def layer(data: dict[str, Any], j: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = data["steps"][3]["layers"][j]
    return result


def line_with(**devices: Any) -> LineConfig:
    updated = dict(LINE.devices)
    for name, changes in devices.items():
        updated[name] = LINE.devices[name].model_copy(update=changes)
    return LINE.model_copy(update={"devices": updated})


# ---------------------------------------------------------------------------- the valid cases


def test_base_recipe_is_valid() -> None:
    text = yaml.safe_dump(BASE, sort_keys=False)
    recipe = parse_recipe(text, LINE)
    assert recipe.text == text
    assert recipe.total_passes() == 4
    assert check_recipe(recipe, LINE) == []


@pytest.mark.parametrize("name", ["smoke-test", "f-doped-cladding", "silica-overclad"])
def test_shipped_recipes_validate(name: str) -> None:
    path = RECIPES / f"{name}.yaml"
    recipe = load_recipe(path, LINE)
    assert recipe.name == name
    assert recipe.path == path
    assert recipe.text == path.read_text()
    assert recipe.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert recipe_hash(recipe.text) == recipe.sha256
    assert {s.step for s in recipe.steps} >= {"purge", "ignite", "ramp", "deposit", "cool_down"}


def test_f_doped_cladding_is_the_nominal_run() -> None:
    recipe = load_recipe(RECIPES / "f-doped-cladding.yaml", LINE)
    assert recipe.dopant_gas == "SF6"
    assert recipe.total_passes() == 100
    ((_, deposit),) = recipe.deposit_steps()
    dopant = [layer.dopant_slpm for layer in deposit.layers]
    assert dopant == sorted(dopant)
    assert dopant[0] < dopant[-1]
    for each in deposit.layers:
        assert (each.power_kw, each.o2_slpm, each.n2_slpm) == (50, 80, 30)
        assert (each.sicl4_g_min, each.spindle_rpm, each.traverse_mm_min) == (20, 30, 150)


def test_silica_overclad_is_undoped() -> None:
    recipe = load_recipe(RECIPES / "silica-overclad.yaml", LINE)
    assert recipe.dopant_gas is None
    assert recipe.total_passes() == 150
    assert all(layer.dopant_slpm == 0 for _, s in recipe.deposit_steps() for layer in s.layers)


def test_turning_points_come_from_the_line_unless_overridden() -> None:
    assert turning_points_mm(parse_recipe(yaml.safe_dump(BASE), LINE), LINE) == (300, 900)
    data = base()
    data["stroke"] = {"turning_point_a_mm": 400, "turning_point_b_mm": 800}
    assert turning_points_mm(parse_recipe(yaml.safe_dump(data), LINE), LINE) == (400, 800)


def test_sicl4_conversion_uses_the_mfc_standard() -> None:
    assert LINE.mfc("mfc_sicl4").slpm_for(75.8) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="grams_per_min_per_slpm"):
        LINE.mfc("mfc_o2").slpm_for(20)


# ---------------------------------------------------------------------------- structure


def test_unknown_fields_are_errors_at_every_level() -> None:
    data = base()
    data["nmae"] = "typo"
    data["steps"][2]["power_kW"] = 50
    layer(data, 1)["sicl4_gmin"] = 20
    issues = errors_of(data)
    for field in ("nmae", "steps[2].power_kW", "steps[3].layers[1].sicl4_gmin"):
        assert_issue(issues, field, "unknown field")
    # Nothing else: no echo of the bad layer as a missing one.
    assert len(issues) == 3


def test_unknown_step_kind() -> None:
    data = base()
    data["steps"][4]["step"] = "dwel"
    issue = assert_issue(errors_of(data), "steps[4]", "dwel")
    assert all(kind in issue.reason for kind in ("dwell", "cool_down"))


def test_missing_field() -> None:
    data = base()
    del layer(data)["sicl4_g_min"]
    assert_issue(errors_of(data), "steps[3].layers[0].sicl4_g_min", "required")


def test_wrong_type_and_range() -> None:
    data = base()
    layer(data)["passes"] = 0
    data["steps"][0]["duration_s"] = "long"
    issues = errors_of(data)
    assert_issue(issues, "steps[3].layers[0].passes", "greater than or equal to 1", "0")
    assert_issue(issues, "steps[0].duration_s", "number", "'long'")


def test_every_structural_error_is_reported_at_once() -> None:
    data = base()
    data["versoin"] = 2
    layer(data, 0)["passes"] = -1
    layer(data, 1)["spindle_rpm"] = 0
    del data["steps"][5]["duration_s"]
    fields = {i.field for i in errors_of(data)}
    assert fields >= {
        "versoin",
        "steps[3].layers[0].passes",
        "steps[3].layers[1].spindle_rpm",
        "steps[5].duration_s",
    }


def test_structure_errors_come_before_limit_checks() -> None:
    # A malformed recipe cannot be read for limits; structure is reported alone.
    data = base()
    data["extra"] = 1
    layer(data)["power_kw"] = 500
    assert [i.field for i in errors_of(data)] == ["extra"]


def test_every_limit_error_is_reported_at_once() -> None:
    data = base()
    layer(data, 0)["power_kw"] = 90
    layer(data, 1)["sicl4_g_min"] = 80
    data["steps"][1]["ar_slpm"] = 60
    data["dopant_gas"] = "C2F6"
    fields = {i.field for i in errors_of(data)}
    assert fields >= {
        "steps[3].layers[0].power_kw",
        "steps[3].layers[1].sicl4_g_min",
        "steps[1].ar_slpm",
        "dopant_gas",
    }


def test_trim_bounds_must_straddle_zero() -> None:
    data = base()
    layer(data)["power_trim_kw"] = [2, 5]
    layer(data)["traverse_trim_pct"] = [-100, 10]
    issues = errors_of(data)
    assert_issue(issues, "steps[3].layers[0].power_trim_kw", "low <= 0")
    assert_issue(issues, "steps[3].layers[0].traverse_trim_pct", "> -100")


def test_ignite_expected_time_within_timeout() -> None:
    data = base()
    data["steps"][1]["expected_duration_s"] = 60
    assert_issue(errors_of(data), "steps[1]", "expected_duration_s exceeds timeout_s")


def test_stroke_turning_points_in_order() -> None:
    data = base()
    data["stroke"] = {"turning_point_a_mm": 800, "turning_point_b_mm": 400}
    assert_issue(errors_of(data), "stroke", "turning_point_b_mm must exceed")


def test_empty_recipe_parts() -> None:
    data = base()
    data["steps"][3]["layers"] = []
    assert_issue(errors_of(data), "steps[3].layers", "at least 1")
    data["steps"] = []
    assert_issue(errors_of(data), "steps", "at least 1")


def test_duplicate_yaml_key_is_an_error() -> None:
    text = yaml.safe_dump(BASE, sort_keys=False).replace("version: 1\n", "version: 1\nversion: 2\n")
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, LINE)
    assert_issue(info.value.errors, "version", "duplicate key")


def test_invalid_yaml_is_reported_with_its_line() -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe("name: x\nsteps: [\n", LINE, Path("bad.yaml"))
    (issue,) = info.value.errors
    assert issue.field == ""
    assert "not valid YAML" in issue.reason
    assert issue.line is not None


def test_a_recipe_is_a_mapping() -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe("- just a list\n", LINE)
    assert "mapping" in info.value.errors[0].reason


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(RecipeError) as info:
        load_recipe(path, LINE)
    assert info.value.path == path
    assert "cannot read" in info.value.errors[0].reason


# ---------------------------------------------------------------------------- machine limits


@pytest.mark.parametrize(
    ("where", "field"),
    [
        (lambda d: d["steps"][1], "steps[1].power_kw"),
        (lambda d: d["steps"][2], "steps[2].power_kw"),
        (lambda d: layer(d, 1), "steps[3].layers[1].power_kw"),
    ],
)
def test_power_above_rf_maximum(where: Any, field: str) -> None:
    data = base()
    where(data)["power_kw"] = 85
    data["steps"][2]["duration_s"] = 600  # keep the ramp's slew legal
    assert_issue(errors_of(data), field, "85 kW exceeds the RF generator's maximum (80 kW)")


def test_power_trim_above_rf_maximum() -> None:
    data = base()
    layer(data)["power_kw"] = 78
    assert_issue(
        errors_of(data), "steps[3].layers[0].power_trim_kw", "78 kW plus a trim of +5 kW", "80 kW"
    )


def test_power_trim_that_puts_the_plasma_out() -> None:
    data = base()
    layer(data)["power_trim_kw"] = [-60, 5]
    assert_issue(errors_of(data), "steps[3].layers[0].power_trim_kw", "put the plasma out")


@pytest.mark.parametrize(
    ("where", "field", "flow", "gas", "full_scale"),
    [
        (lambda d: d["steps"][1], "steps[1].ar_slpm", 60, "Ar", 50),
        (lambda d: layer(d, 0), "steps[3].layers[0].o2_slpm", 250, "O2", 200),
        (lambda d: d["steps"][0], "steps[0].n2_slpm", 120, "N2", 100),
        (lambda d: d["steps"][5], "steps[5].n2_slpm", 120, "N2", 100),
    ],
)
def test_gas_flow_above_mfc_full_scale(
    where: Any, field: str, flow: float, gas: str, full_scale: float
) -> None:
    data = base()
    where(data)[field.rsplit(".", 1)[1]] = flow
    assert_issue(
        errors_of(data),
        field,
        f"{flow} slpm exceeds the {gas} MFC's full scale ({full_scale} slpm)",
    )


def test_sicl4_above_mfc_full_scale_in_grams() -> None:
    data = base()
    layer(data, 1)["sicl4_g_min"] = 80
    layer(data, 1)["o2_slpm"] = 80
    issue = assert_issue(errors_of(data), "steps[3].layers[1].sicl4_g_min")
    assert issue.reason == "80 g/min exceeds the SiCl4 MFC's full scale (75.8 g/min)"


def test_sicl4_trim_above_mfc_full_scale() -> None:
    data = base()
    layer(data)["sicl4_g_min"] = 70
    layer(data)["sicl4_trim_pct"] = [-10, 10]
    assert_issue(errors_of(data), "steps[3].layers[0].sicl4_trim_pct", "77 g/min", "75.8 g/min")


def test_sicl4_needs_a_conversion_on_the_line() -> None:
    line = line_with(mfc_sicl4={"grams_per_min_per_slpm": None})
    assert_issue(errors_of(base(), line), "steps[3].layers[0].sicl4_g_min", "grams_per_min")


def test_dopant_flow_above_mfc_full_scale() -> None:
    data = base()
    layer(data, 1)["dopant_slpm"] = 6
    assert_issue(
        errors_of(data),
        "steps[3].layers[1].dopant_slpm",
        "6 slpm exceeds the SF6 MFC's full scale (5 slpm)",
    )


def test_dopant_gas_must_match_the_line() -> None:
    data = base()
    data["dopant_gas"] = "C2F6"
    issue = assert_issue(errors_of(data), "dopant_gas")
    assert issue.reason == "C2F6 does not match the line's dopant MFC gas (SF6)"


@pytest.mark.parametrize(
    ("where", "field"),
    [
        (lambda d: layer(d, 0), "steps[3].layers[0].spindle_rpm"),
        (lambda d: d["steps"][1], "steps[1].spindle_rpm"),
        (lambda d: d["steps"][5], "steps[5].spindle_rpm"),
    ],
)
def test_spindle_above_maximum(where: Any, field: str) -> None:
    data = base()
    where(data)["spindle_rpm"] = 120
    assert_issue(errors_of(data), field, "120 rpm exceeds the spindle's maximum (100 rpm)")


def test_cool_down_needs_a_spindle_speed() -> None:
    line = line_with(spindle={"cooling_speed_rpm": None})
    assert_issue(errors_of(base(), line), "steps[5].spindle_rpm", "no spindle cooling speed")
    data = base()
    data["steps"][5]["spindle_rpm"] = 10
    parse_recipe(yaml.safe_dump(data), line)


def test_traverse_above_carriage_maximum() -> None:
    data = base()
    layer(data)["traverse_mm_min"] = 3500
    assert_issue(
        errors_of(data),
        "steps[3].layers[0].traverse_mm_min",
        "3500 mm/min exceeds the carriage's maximum speed (3000 mm/min)",
    )


def test_traverse_trim_above_carriage_maximum() -> None:
    data = base()
    layer(data)["traverse_mm_min"] = 2900
    assert_issue(errors_of(data), "steps[3].layers[0].traverse_trim_pct", "3190 mm/min")


def test_recipe_turning_points_inside_carriage_travel() -> None:
    data = base()
    data["stroke"] = {"turning_point_a_mm": -10, "turning_point_b_mm": 1300}
    issues = errors_of(data)
    assert_issue(issues, "stroke.turning_point_a_mm", "-10 mm lies outside", "(0-1200 mm)")
    assert_issue(issues, "stroke.turning_point_b_mm", "1300 mm lies outside")


def test_line_turning_points_inside_carriage_travel() -> None:
    geometry = GeometryConfig(turning_point_a_mm=300, turning_point_b_mm=1250)
    line = LINE.model_copy(update={"geometry": geometry})
    assert_issue(errors_of(base(), line), "stroke", "the line's turning point B (1250 mm)")
    data = base()
    data["stroke"] = {"turning_point_a_mm": 300, "turning_point_b_mm": 900}
    parse_recipe(yaml.safe_dump(data), line)  # the recipe's own stroke overrides the line's


def test_coil_gap_within_torch_slide_travel() -> None:
    data = base()
    layer(data)["coil_gap_mm"] = 10  # slide at 10 + 15 - 30 = -5 mm on the bait rod
    assert_issue(errors_of(data), "steps[3].layers[0].coil_gap_mm", "-5 mm", "(0-150 mm)")
    data = base()
    data["target_diameter_mm"] = 119
    layer(data)["coil_gap_mm"] = 130  # 130 + 59.5 - 30 on the final preform
    assert_issue(errors_of(data), "steps[3].layers[0].coil_gap_mm", "119 mm rod", "159.5 mm")


def test_target_diameter_within_reach() -> None:
    data = base()
    data["target_diameter_mm"] = 25
    assert_issue(errors_of(data), "target_diameter_mm", "bait rod's diameter (30 mm)")
    data["target_diameter_mm"] = 130
    assert_issue(errors_of(data), "target_diameter_mm", "diameter gauge's range (5-120 mm)")


# ---------------------------------------------------------------------------- cross-field rules


def test_ramp_with_power_needs_ignite_before() -> None:
    data = base()
    del data["steps"][1]
    assert_issue(errors_of(data), "steps[1].power_kw", "needs a lit plasma")


def test_deposit_needs_ignite_before() -> None:
    data = base()
    data["steps"] = [s for s in data["steps"] if s["step"] not in ("ignite", "ramp")]
    issues = errors_of(data)
    assert_issue(issues, "steps[1]", "deposit needs a lit plasma")


def test_sicl4_needs_a_lit_plasma() -> None:
    data = base()
    data["steps"] = [s for s in data["steps"] if s["step"] not in ("ignite", "ramp")]
    issues = errors_of(data)
    assert_issue(issues, "steps[1].layers[0].sicl4_g_min", "SiCl4 without a lit plasma")
    assert_issue(issues, "steps[1].layers[1].sicl4_g_min", "SiCl4 without a lit plasma")


def test_plasma_out_after_a_ramp_to_zero() -> None:
    data = base()
    data["steps"].insert(3, {"step": "ramp", "duration_s": 60, "power_kw": 0, "o2_slpm": 80})
    assert_issue(errors_of(data), "steps[4]", "deposit needs a lit plasma")


def test_dopant_only_with_sicl4() -> None:
    data = base()
    layer(data, 1)["sicl4_g_min"] = 0
    assert_issue(errors_of(data), "steps[3].layers[1].dopant_slpm", "only with SiCl4")


def test_dopant_flow_needs_a_dopant_gas() -> None:
    data = base()
    del data["dopant_gas"]
    assert_issue(errors_of(data), "steps[3].layers[1].dopant_slpm", "dopant_gas", "SF6")


def test_oxygen_needed_for_sicl4() -> None:
    data = base()
    layer(data)["o2_slpm"] = 2  # 20 g/min of SiCl4 is 2.64 slpm at 7.58 g/min per slpm
    assert_issue(
        errors_of(data), "steps[3].layers[0].o2_slpm", "cannot oxidise 20 g/min", "2.639 slpm"
    )
    layer(data)["o2_slpm"] = 0
    assert_issue(errors_of(data), "steps[3].layers[0].o2_slpm", "cannot oxidise")


def test_cool_down_after_the_last_deposit() -> None:
    data = base()
    data["steps"].append(copy.deepcopy(data["steps"][3]))
    assert_issue(errors_of(data), "steps", "no cool_down step after the last deposit (steps[6])")


def test_recipe_must_not_end_lit() -> None:
    data = base()
    data["steps"] = data["steps"][:3]
    assert_issue(errors_of(data), "steps", "ends with the plasma lit")


def test_ramp_slew_within_rf_limit() -> None:
    data = base()
    data["steps"][2]["duration_s"] = 5  # 12 -> 50 kW in 5 s: 7.6 kW/s
    issue = assert_issue(errors_of(data), "steps[2].duration_s", "7.6 kW/s", "(5 kW/s)")
    assert "at least 7.6 s" in issue.reason


def test_cool_down_ramp_within_rf_limit() -> None:
    data = base()
    data["steps"][5]["power_ramp_down_s"] = 5  # 50 kW in 5 s
    assert_issue(errors_of(data), "steps[5].power_ramp_down_s", "10 kW/s", "at least 10 s")


def test_ignite_while_lit() -> None:
    data = base()
    data["steps"].insert(3, copy.deepcopy(data["steps"][1]))
    assert_issue(errors_of(data), "steps[3]", "already", "since steps[1]")


def test_purge_while_lit() -> None:
    data = base()
    data["steps"].insert(3, {"step": "purge", "duration_s": 10})
    assert_issue(errors_of(data), "steps[3]", "purge runs with the RF off", "since steps[1]")


# ---------------------------------------------------------------------------- reporting


def test_issues_carry_their_line_in_the_file() -> None:
    data = base()
    layer(data, 1)["sicl4_g_min"] = 80
    text = yaml.safe_dump(data, sort_keys=False)
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, LINE)
    issue = assert_issue(info.value.errors, "steps[3].layers[1].sicl4_g_min")
    assert issue.line is not None
    assert text.splitlines()[issue.line - 1].strip() == "sicl4_g_min: 80"


def test_format_recipe_error_lines() -> None:
    data = base()
    layer(data, 1)["sicl4_g_min"] = 80
    data["dopant_gas"] = "C2F6"
    with pytest.raises(RecipeError) as info:
        parse_recipe(yaml.safe_dump(data), LINE, Path("recipes/x.yaml"))
    lines = format_recipe_error(info.value).splitlines()
    assert (
        "recipes/x.yaml: steps[3].layers[1].sicl4_g_min: "
        "80 g/min exceeds the SiCl4 MFC's full scale (75.8 g/min)"
    ) in lines
    assert "recipes/x.yaml: dopant_gas: C2F6 does not match the line's dopant MFC gas (SF6)" in (
        lines
    )
    assert len(lines) == len(info.value.errors)


def test_recipe_error_as_json() -> None:
    data = base()
    data["dopant_gas"] = "C2F6"
    with pytest.raises(RecipeError) as info:
        parse_recipe(yaml.safe_dump(data), LINE, Path("r.yaml"))
    report = json.loads(json.dumps(info.value.to_json()))
    assert report["file"] == "r.yaml"
    assert report["valid"] is False
    assert report["errors"][0]["field"] == "dopant_gas"


def test_load_recipe_reports_the_file(tmp_path: Path) -> None:
    data = base()
    data["dopant_gas"] = "C2F6"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as info:
        load_recipe(path, LINE)
    assert format_recipe_error(info.value).startswith(f"{path}: dopant_gas: ")


# ---------------------------------------------------------------------------- JSON Schema


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_json_schema_export() -> None:
    schema = json.loads(json.dumps(recipe_json_schema()))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert set(schema["required"]) >= {"name", "version", "steps"}
    assert schema["additionalProperties"] is False
    for ref in _refs(schema):
        assert ref.startswith("#/$defs/")
        assert ref.removeprefix("#/$defs/") in schema["$defs"]
    steps = schema["properties"]["steps"]["items"]
    assert set(steps["discriminator"]["mapping"]) == set(STEP_KINDS)
    layer_schema = schema["$defs"]["Layer"]
    assert layer_schema["additionalProperties"] is False
    assert {"sicl4_g_min", "power_trim_kw", "traverse_mm_min"} <= set(layer_schema["properties"])


def test_recipe_model_is_frozen() -> None:
    recipe = parse_recipe(yaml.safe_dump(BASE), LINE)
    assert isinstance(recipe, Recipe)
    with pytest.raises(ValueError, match="frozen"):
        recipe.name = "other"  # type: ignore[misc]
