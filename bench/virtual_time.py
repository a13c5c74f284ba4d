"""The virtual-time dry run on a whole recipe (issue 12 item 6): its wall and CPU time, and its
product against a time-scaled run's on the same machine, one after the other. Prints JSON; the
figures go in docs/benchmarks.md.

    .venv/bin/python bench/virtual_time.py [--recipe recipes/f-doped-cladding.yaml]
        [--time-scale 200] [--seed 1] [--reference-scale 10] [--no-repeat]

Bars: the 100-pass recipe in <= 60 s of wall time; pass count equal to the reference run's,
layer boundaries within 0.2 %, gas totals within 1 %; a second dry run of the same seed leaves
the same records (wall-clock fields aside). ``--reference-scale 0`` skips the reference run (a
100-pass run is 40 minutes of wall time at x10, 2 at x200)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dryrun.records_view import Product, product_of, records_without_wall_clock

ROOT = Path(__file__).resolve().parent.parent
BOUNDARY_BAR = 0.002
GAS_BAR = 0.01
WALL_BAR_S = 60.0


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(data_dir: Path, recipe: Path, scale: float, *extra: str) -> dict[str, Any]:
    """One ``povd run``; its wall time, the CPU time of it and its children, its exit code."""
    data_dir.mkdir(parents=True)
    cpu0, wall0 = _children_cpu_s(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "--data-dir", str(data_dir), "run",
         str(recipe), "--sim", "--time-scale", f"{scale:g}", "--operator", "bench", *extra],
        cwd=ROOT, capture_output=True, text=True, check=False)
    figures: dict[str, Any] = {
        "time_scale": scale, "exit": done.returncode,
        "wall_s": round(time.perf_counter() - wall0, 2),
        "cpu_s": round(_children_cpu_s() - cpu0, 2),
    }
    last = done.stdout.strip().splitlines()[-1:] or [""]
    if last[0].startswith('{"dry_run"'):
        dry = json.loads(last[0])["dry_run"]
        figures.update(virtual_s=dry["virtual_s"], clock_jumps=dry["jumps"],
                       thread_waits=dry["thread_waits"])
    if done.returncode != 0:
        figures["stderr_tail"] = done.stderr[-1500:]
    return figures


def _relative(mine: float, theirs: float) -> float:
    return abs(mine - theirs) / abs(theirs) if theirs else abs(mine)


def compare(dry: Product, reference: Product) -> dict[str, Any]:
    boundaries = [round(_relative(m, t) * 100, 4) for m, t in
                  zip(dry.layer_boundaries_mm, reference.layer_boundaries_mm, strict=False)]
    gases = {gas: round(_relative(total, reference.gas_totals_sl.get(gas, 0.0)) * 100, 4)
             for gas, total in dry.gas_totals_sl.items()}
    return {
        "passes": [dry.passes, reference.passes],
        "final_mm": [dry.final_diameter_mm, reference.final_diameter_mm],
        "boundaries_mm": [dry.layer_boundaries_mm, reference.layer_boundaries_mm],
        "boundary_diff_pct": boundaries,
        "gas_totals_sl": [dry.gas_totals_sl, reference.gas_totals_sl],
        "gas_diff_pct": gases,
        "met": (dry.passes == reference.passes
                and len(boundaries) == len(reference.layer_boundaries_mm)
                and all(b <= BOUNDARY_BAR * 100 for b in boundaries)
                and all(g <= GAS_BAR * 100 for g in gases.values())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes/f-doped-cladding.yaml")
    parser.add_argument("--time-scale", type=float, default=200.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reference-scale", type=float, default=10.0)
    parser.add_argument("--no-repeat", action="store_true", help="skip the determinism run")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "recipe": str(args.recipe), "seed": args.seed,
        "machine": f"{os.cpu_count()} cores, {platform.platform()}, Python "
                   f"{platform.python_version()}",
        "load_average_at_start": os.getloadavg(),
    }
    seed = ("--virtual-time", "--seed", str(args.seed))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result["virtual"] = _run(work / "virtual", args.recipe, args.time_scale, *seed)
        result["virtual"]["wall_bar_met"] = result["virtual"]["wall_s"] <= WALL_BAR_S
        dry = product_of(work / "virtual/records.sqlite3", 1, args.time_scale)
        result["virtual"]["product"] = dry.__dict__
        if not args.no_repeat:
            result["repeat"] = _run(work / "repeat", args.recipe, args.time_scale, *seed)
            first = records_without_wall_clock(work / "virtual/records.sqlite3")
            second = records_without_wall_clock(work / "repeat/records.sqlite3")
            result["repeat"]["identical_records"] = first == second
            result["repeat"]["rows"] = {table: len(rows) for table, rows in first.items()}
        if args.reference_scale > 0:
            result["reference"] = _run(work / "reference", args.recipe, args.reference_scale)
            reference = product_of(work / "reference/records.sqlite3", 1, args.reference_scale)
            result["comparison"] = compare(dry, reference)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
