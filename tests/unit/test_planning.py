"""The Plan is the only reading of a recipe: it carries every field the executor and the
forecast need, and the plasma's state before each step is computed once, from the recipe."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from controller.config.line import load_line_config
from controller.recipes.loading import parse_recipe
from controller.recipes.plan import DepositOp, IgniteOp, PurgeOp
from controller.recipes.planning import plan_from_recipe
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
