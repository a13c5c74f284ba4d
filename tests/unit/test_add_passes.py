"""The operator's extra passes (issue 9): when they may be added and when not, each refusal
saying why; which roles may; what the status says of a layer's passes. The rules run on the
real executor and plan of tests/system/recipes/layers.yaml (6 + 7 + 7 passes, extra_passes
[0, 6] on each layer); nothing here touches a device."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from controller.machine.telemetry import Telemetry
from controller.recipes.loading import load_recipe
from controller.recipes.plan import DepositOp, Plan
from controller.recipes.planning import plan_from_recipe
from controller.run.commands import LayerPasses, add_passes_refusal, layer_passes
from controller.run.executor import Cursor, Executor
from controller.run.process_clock import ProcessClock
from controller.safety.envelope import EnvelopeInputs, compute
from controller.safety.states import State
from controller.safety.writer import Actuators
from controller.service.roles import PERMISSIONS, SERVICE_COMMANDS, Role, refusal
from tests.fakes import default_line, recording_machine

LINE = default_line()
LAYERS = Path(__file__).resolve().parents[1] / "system" / "recipes" / "layers.yaml"
PLAN = plan_from_recipe(load_recipe(LAYERS, LINE), LINE)
DEPOSIT_STEP = next(i for i, op in enumerate(PLAN.steps) if isinstance(op, DepositOp))
RAMP_STEP = DEPOSIT_STEP - 1


def executor(*, layer: int = 0, layer_pass: int = 1, step: int = DEPOSIT_STEP,
             plan: Plan = PLAN) -> Executor:
    """The run's executor with its cursor where the test says (the plan's deposit step by
    default), as the deposition leaves it between two boundaries."""
    act = Actuators(recording_machine(LINE),
                    lambda: compute(EnvelopeInputs(state=State.EXECUTE), LINE))
    cursor = Cursor(step=step, layer=layer, layer_pass=layer_pass)
    ex = Executor(plan, LINE, act, Telemetry(), ProcessClock(1.0), cursor=cursor)
    ex.current_op = "deposit" if step == DEPOSIT_STEP else "ramp"
    return ex


def test_the_recipe_under_test_allows_six_extra_passes_per_layer() -> None:
    op = PLAN.steps[DEPOSIT_STEP]
    assert isinstance(op, DepositOp)
    assert [(layer.name, layer.passes, layer.extra_passes_max) for layer in op.layers] == [
        ("inner", 6, 6), ("middle", 7, 6), ("outer", 7, 6)]


# -- accepted --------------------------------------------------------------------------------
@pytest.mark.parametrize("state", [State.EXECUTE, State.HELD])
@pytest.mark.parametrize("layer", [None, 0, 1, 2])
def test_the_current_or_a_later_layer_while_depositing_or_held(
        state: State, layer: int | None) -> None:
    assert add_passes_refusal(executor(), state, layer, 6) is None


def test_the_last_layer_before_its_last_pass_has_ended() -> None:
    ex = executor(layer=2, layer_pass=6)
    assert add_passes_refusal(ex, State.EXECUTE, None, 1) is None


# -- refused ---------------------------------------------------------------------------------
def test_no_run() -> None:
    assert (add_passes_refusal(None, State.IDLE, None, 1)
            == "add_passes applies to a running deposition, not in Idle")


@pytest.mark.parametrize("state", [s for s in State if s not in (State.EXECUTE, State.HELD)])
def test_a_run_in_any_other_state(state: State) -> None:
    assert (add_passes_refusal(executor(), state, None, 1)
            == f"add_passes applies to a running deposition, not in {state.value}")


def test_a_run_outside_its_deposit_step() -> None:
    ex = executor(step=RAMP_STEP)
    assert (add_passes_refusal(ex, State.EXECUTE, None, 1)
            == "add_passes applies during a deposit step, not during ramp")


def test_a_layer_already_made() -> None:
    ex = executor(layer=1, layer_pass=2)
    assert add_passes_refusal(ex, State.EXECUTE, 0, 1) == (
        "layer 0 (inner) has made its passes: add them to the current layer (1, middle) or a "
        "later one")


def test_the_last_layer_once_its_passes_are_made() -> None:
    ex = executor(layer=2, layer_pass=7)
    assert add_passes_refusal(ex, State.EXECUTE, None, 1) == (
        "layer 2 (outer) has made its passes: add them to the current layer (2, outer) or a "
        "later one")


@pytest.mark.parametrize("layer", [3, -1])
def test_a_layer_the_deposit_step_does_not_have(layer: int) -> None:
    assert add_passes_refusal(executor(), State.EXECUTE, layer, 1) == (
        f"layer {layer} is not a layer of the deposit step running (layers 0 to 2)")


@pytest.mark.parametrize("passes", [0, -2])
def test_fewer_than_one_pass(passes: int) -> None:
    assert (add_passes_refusal(executor(), State.EXECUTE, None, passes)
            == f"the passes to add must be at least 1, not {passes}")


def test_more_than_the_recipe_allows() -> None:
    assert add_passes_refusal(executor(), State.EXECUTE, 1, 7) == (
        "layer 1 (middle): the recipe allows 6 extra passes, 0 already added; 7 more would "
        "exceed it")


def test_what_was_already_added_counts() -> None:
    ex = executor()
    ex.add_passes(0, 4)
    assert add_passes_refusal(ex, State.EXECUTE, None, 3) == (
        "layer 0 (inner): the recipe allows 6 extra passes, 4 already added; 3 more would "
        "exceed it")
    assert add_passes_refusal(ex, State.EXECUTE, None, 2) is None
    assert add_passes_refusal(ex, State.EXECUTE, 1, 6) is None  # each layer its own budget


def test_a_layer_the_recipe_gives_no_extra_passes() -> None:
    op = PLAN.steps[DEPOSIT_STEP]
    assert isinstance(op, DepositOp)
    fixed = dataclasses.replace(op.layers[0], extra_passes_max=0)
    steps = list(PLAN.steps)
    steps[DEPOSIT_STEP] = dataclasses.replace(op, layers=(fixed, *op.layers[1:]))
    ex = executor(plan=dataclasses.replace(PLAN, steps=tuple(steps)))
    assert (add_passes_refusal(ex, State.EXECUTE, None, 1)
            == "layer 0 (inner): the recipe allows it no extra passes")


# -- roles -----------------------------------------------------------------------------------
def test_the_roles_that_may_trim_may_add_passes() -> None:
    assert "add_passes" in SERVICE_COMMANDS
    assert PERMISSIONS["add_passes"] == PERMISSIONS["trim"] == {Role.OPERATOR, Role.ENGINEER}
    assert (refusal(Role.VIEWER, "add_passes")
            == "role viewer may not add_passes (needs operator or engineer)")
    assert refusal(Role.MAINTENANCE, "add_passes") is not None
    assert refusal(Role.ADMIN, "add_passes") is not None


# -- the layer's passes, as the status shows them ----------------------------------------------
def test_a_layers_passes_planned_extra_and_made() -> None:
    ex = executor(layer=1, layer_pass=3)
    ex.add_passes(0, 2)
    ex.add_passes(1, 1)
    assert layer_passes(ex) == LayerPasses(1, "middle", 7, 1, 6, 3)
    assert layer_passes(ex, 0) == LayerPasses(0, "inner", 6, 2, 6, 8)
    assert layer_passes(ex, 2) == LayerPasses(2, "outer", 7, 0, 6, 0)
    assert layer_passes(ex, 3) is None
    assert layer_passes(executor(step=RAMP_STEP)) is None
    assert layer_passes(None) is None
    assert LayerPasses(1, "middle", 7, 1, 6, 3).to_json() == {
        "layer": 1, "label": "middle", "planned": 7, "extra": 1, "passes": 8, "extra_max": 6,
        "done": 3}
