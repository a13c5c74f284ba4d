"""What a run's screen needs of its recipe: the name and lots it was started with, each
deposit layer's planned outer diameter and trim bounds, and the forecast's step and pass
durations (for the ETA). Made from the run's records (the recipe text the run was started
with), so it is the plan that runs, whoever started it and from which client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.config.line import LineConfig
from controller.recipes.forecast import forecast
from controller.recipes.loading import parse_recipe
from controller.recipes.plan import DepositOp
from controller.recipes.planning import plan_from_recipe
from controller.records.reader import RecordsReader
from controller.records.schema import RecordsUnavailable, to_plain


def run_plan(records_path: Path, run_id: int, line: LineConfig) -> dict[str, Any] | None:
    """The run's plan view; None for no such run."""
    try:
        detail = RecordsReader(records_path).get_run(run_id)
    except RecordsUnavailable:
        return None
    if detail is None:
        return None
    plan = plan_from_recipe(parse_recipe(detail.recipe_text, line), line)
    layers = [
        {"step": step, "layer": index, "label": layer.name, "passes": layer.passes,
         "target_diameter_mm": layer.target_diameter_mm,
         "power_trim_kw": list(layer.power_trim_kw),
         "traverse_trim_pct": list(layer.traverse_trim_pct)}
        for step, op in enumerate(plan.steps) if isinstance(op, DepositOp)
        for index, layer in enumerate(op.layers)
    ]
    return {"run": to_plain(detail.run), "layers": layers,
            "start_diameter_mm": line.geometry.bait_rod_diameter_mm,
            "forecast": forecast(plan, line).to_json()}
