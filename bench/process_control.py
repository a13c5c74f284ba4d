"""The closed loop on the shipped 100-pass recipe over the wire (rule 12): for each drift case,
the final diameter against the target, each layer's radial thickness against the plan, the
composition that reached the torch, the SiCl4 scale and traverse used, and the alarm. Prints
JSON; the figures go in docs/process-control.md.

    .venv/bin/python bench/process_control.py [--recipe recipes/f-doped-cladding.yaml]
        [--time-scale 200] [--drift -0.12 --drift 0.15 ...] [--drift-at 33]

A 100-pass run is 24,000 process seconds: two minutes of wall time at x200 per case."""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.config.logging_setup import configure_logging
from tests.system.test_growth_control import (
    _composition_errors,
    _layer_boundaries,
    _layers,
    _run,
    _thickness_errors,
    plan_of,
)

ROOT = Path(__file__).resolve().parent.parent


async def one_case(recipe: Path, drift: float, drift_at: int, time_scale: float) -> dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        rig, preform, _ = await _run(Path(tmp), drift=drift, time_scale=time_scale,
                                     recipe=str(recipe), drift_at=drift_at)
        plan = plan_of(rig, recipe)
        layers = _layers(plan)
        planned = [layer.target_diameter_mm for layer in layers]
        final = rig.sim.plant.rod_diameter_mm
        measured = _layer_boundaries(preform, final)
        start = rig.line.geometry.bait_rod_diameter_mm
        composition = [abs(e) for n, e in _composition_errors(preform, plan)]
        scales = [p["sicl4_scale"] for p in preform.passes]
        speeds = [p["traverse_mm_min"] for p in preform.passes]
        return {
            "drift": drift, "drift_at_pass": drift_at, "passes": len(preform.passes),
            "target_mm": planned[-1], "final_mm": round(final, 3),
            "final_error_pct": round((final / planned[-1] - 1) * 100, 3),
            "layers": [
                {"layer": layer.name, "planned_mm": round(p, 3), "measured_mm": round(m, 3),
                 "thickness_error_pct": round(e, 2)}
                for layer, p, m, e in zip(layers, planned, measured,
                                          _thickness_errors(planned, measured, start),
                                          strict=True)
            ],
            "composition_error_pct": {
                "median": round(statistics.median(composition), 3) if composition else None,
                "max": round(max(composition), 3) if composition else None,
            },
            "sicl4_scale": {"min": min(scales), "max": max(scales),
                            "mean": round(statistics.fmean(scales), 4)},
            "traverse_mm_min": {"min": min(speeds), "max": max(speeds)},
            "alarm_at_pass": None if preform.alarm_at is None else preform.alarm_at[0],
            "wall_s": round(time.monotonic() - started, 1),
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "f-doped-cladding.yaml")
    parser.add_argument("--time-scale", type=float, default=200.0)
    parser.add_argument("--drift", type=float, action="append")
    parser.add_argument("--drift-at", type=int, default=33)
    args = parser.parse_args()
    configure_logging(level="WARNING")
    cases = [await one_case(args.recipe.resolve(), drift, args.drift_at, args.time_scale)
             for drift in (args.drift or [0.0, -0.12, 0.15])]
    print(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                      "recipe": str(args.recipe), "time_scale": args.time_scale,
                      "cases": cases}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
