"""Property tests (issue 11: bad input never crashes and never moves the machine): whatever a
recipe document holds, ``parse_recipe`` returns a Recipe or raises a RecipeError that says
where and why, never another exception; and a recipe it accepts plans and forecasts with
finite setpoints only, so that nothing it lets through can command a NaN or an infinity."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.config.line import load_line_config
from controller.recipes.forecast import forecast
from controller.recipes.loading import parse_recipe
from controller.recipes.planning import plan_from_recipe
from controller.recipes.recipe import Recipe, RecipeError, recipe_json_schema

ROOT = Path(__file__).resolve().parents[2]
LINE = load_line_config()
SMOKE_TEXT = (ROOT / "recipes/smoke-test.yaml").read_text()
SMOKE: dict[str, Any] = yaml.safe_load(SMOKE_TEXT)
# A few seconds a test in the suite; POVD_PROPERTY_EXAMPLES=2000 for a longer hunt.
EXAMPLES = int(os.environ.get("POVD_PROPERTY_EXAMPLES", "150"))
PROPERTY = settings(deadline=None, max_examples=EXAMPLES,
                    suppress_health_check=[HealthCheck.too_slow])


def _field_names(schema: dict[str, Any]) -> list[str]:
    names: set[str] = set(schema.get("properties", {}))
    for definition in schema.get("$defs", {}).values():
        names.update(definition.get("properties", {}))
    return sorted(names)


FIELDS = _field_names(recipe_json_schema())
STEP_KINDS = ["purge", "ignite", "ramp", "deposit", "dwell", "cool_down"]

# Values a hand-edited recipe (or a hostile one) may hold where a number is expected.
NUMBERS = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e-300, 1e300, 2**63, 0.5, 100, 1e6]),
)
SCALARS = st.one_of(NUMBERS, st.booleans(), st.none(), st.text(max_size=20),
                    st.sampled_from(STEP_KINDS + FIELDS))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8),
                                            inner, max_size=4)),
    max_leaves=12,
)


def outcome(text: str) -> Recipe | RecipeError:
    """The only two results allowed; anything else propagates and fails the test."""
    try:
        return parse_recipe(text, LINE)
    except RecipeError as exc:
        return exc


def assert_moves_nothing_wrong(recipe: Recipe) -> None:
    """An accepted recipe plans and forecasts, every setpoint finite and the forecast too."""
    plan = plan_from_recipe(recipe, LINE)
    numbers = _numbers(plan)
    assert numbers and all(math.isfinite(n) for n in numbers), plan
    prediction = forecast(plan, LINE, efficiency=LINE.supervision.nominal_efficiency)
    assert all(math.isfinite(n) for n in _numbers(prediction.to_json()))


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list | tuple):
        return [n for v in value for n in _numbers(v)]
    if hasattr(value, "__dataclass_fields__"):
        return [n for name in value.__dataclass_fields__ for n in _numbers(getattr(value, name))]
    return []


# --------------------------------------------------------------------------------------------
# Mutations of a valid recipe


def _paths(doc: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [here]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*here, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*here, i))
    return out


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


@st.composite
def mutated_recipes(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(SMOKE)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        path = draw(st.sampled_from(_paths(doc)[1:]))
        parent: Any = doc
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        action = draw(st.sampled_from(["set", "number", "delete", "add", "duplicate"]))
        if action == "set":
            parent[key] = draw(VALUES)
        elif action == "number":
            parent[key] = draw(NUMBERS)
        elif action == "delete":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(FIELDS))] = draw(VALUES)
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
    return doc


@PROPERTY
@given(mutated_recipes())
def test_a_mutated_recipe_is_valid_or_refused_field_by_field(doc: dict[str, Any]) -> None:
    result = outcome(yaml.safe_dump(doc, sort_keys=False))
    if isinstance(result, RecipeError):
        assert result.errors
        for issue in result.errors:
            assert issue.field, issue  # a structured document's every issue names its field
            assert issue.reason
    else:
        assert_moves_nothing_wrong(result)


@PROPERTY
@given(st.sampled_from(FIELDS), NUMBERS, st.integers(min_value=0, max_value=2))
def test_any_number_in_any_layer_field_is_valid_or_refused(field: str, value: float,
                                                           layer: int) -> None:
    doc = copy.deepcopy(SMOKE)
    doc["steps"][3]["layers"][layer][field] = value
    result = outcome(yaml.safe_dump(doc, sort_keys=False))
    if isinstance(result, RecipeError):
        assert all(issue.field for issue in result.errors), result.errors
    else:
        assert_moves_nothing_wrong(result)


NUMERIC_PATHS = [path for path in _paths(SMOKE)
                 if isinstance(_at(SMOKE, path), int | float)
                 and not isinstance(_at(SMOKE, path), bool)]


@PROPERTY
@given(st.sampled_from(NUMERIC_PATHS),
       st.sampled_from([math.nan, math.inf, -math.inf]) | st.floats(allow_nan=True))
def test_a_non_finite_number_anywhere_is_refused_at_its_field(path: tuple[Any, ...],
                                                              value: float) -> None:
    doc = copy.deepcopy(SMOKE)
    parent = _at(doc, path[:-1])
    parent[path[-1]] = value
    result = outcome(yaml.safe_dump(doc, sort_keys=False))
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    if math.isfinite(value):
        if isinstance(result, Recipe):
            assert_moves_nothing_wrong(result)
        return
    assert isinstance(result, RecipeError)
    assert field in [issue.field for issue in result.errors], result.errors


# --------------------------------------------------------------------------------------------
# Arbitrary text

# Pieces of YAML: structure, anchors and aliases, tags, the schema's own words, odd scalars.
TOKENS = st.sampled_from([
    "\n", "\n  ", "\n    ", "\n  - ", "- ", ": ", ", ", "[", "]", "{", "}", "? ", "&a ", "*a",
    "&b ", "*b", "<<: *a", "!!int ", "!!float ", "!!str ", "!!binary ", "!!timestamp ",
    "!!python/object ", "%YAML 1.1\n", "---\n", "...\n", "'", '"', "#", "|", ">", "0x1F",
    "1e400", ".nan", ".inf", "-.inf", "2001-02-30", "2001-12-14t21:59:43.10-05:00", "~", "null",
    "yes", "9" * 30, "\t", "\x00", "\ufeff", "é", "name", "version", "steps", "step",
    *STEP_KINDS, *FIELDS,
])


@PROPERTY
@given(st.lists(TOKENS | st.text(max_size=6), max_size=60).map("".join))
def test_yaml_pieces_are_a_recipe_or_a_refusal(text: str) -> None:
    outcome(text)


@PROPERTY
@given(st.text(max_size=300))
def test_any_text_is_a_recipe_or_a_refusal(text: str) -> None:
    outcome(text)


@PROPERTY
@given(st.integers(min_value=0, max_value=len(SMOKE_TEXT)), st.text(max_size=20),
       st.integers(min_value=0, max_value=40))
def test_an_edited_recipe_text_is_a_recipe_or_a_refusal(at: int, insert: str,
                                                        cut: int) -> None:
    result = outcome(SMOKE_TEXT[:at] + insert + SMOKE_TEXT[at + cut:])
    if isinstance(result, Recipe):
        assert_moves_nothing_wrong(result)
