"""The virtual-time dry run (``povd run RECIPE --sim --virtual-time``), through the CLI as an
operator runs it: two runs of one seed leave the same records (wall-clock fields aside), the
product is a scaled run's, and a fault set for a process time lands at that process time."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dryrun.in_process_line import DEFAULT_TIME_SCALE
from dryrun.records_view import Product, product_of, records_without_wall_clock

ROOT = Path(__file__).resolve().parents[2]
QUICK = ROOT / "tests/system/recipes/quick.yaml"
# 20 passes of 55 process seconds, three layers: long enough passes for a product to compare
# (quick.yaml's 12-second passes are 60 ms of wall time at x200, of the order of a loaded
# machine's latency in the scaled run).
LAYERS = ROOT / "tests/system/recipes/layers.yaml"
# Purge, the 100-pass recipe's ignition, a 20 s ramp and one pass: argon flows only there.
ARGON = ROOT / "tests/system/recipes/argon.yaml"
SCALE = 200.0
REFERENCE_SCALE = 10.0  # the scaled run the dry run's product is held to (issue 12 item 6)
DRY_RUN_SCALE = DEFAULT_TIME_SCALE
RUN_TIMEOUT_S = 540  # a ceiling on a stuck run, not a speed requirement

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _povd_run(data_dir: Path, *extra: str, recipe: Path = QUICK,
              scale: float = SCALE) -> subprocess.Popen[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "controller.cli.main", "--data-dir", str(data_dir), "run",
         str(recipe), "--sim", "--time-scale", f"{scale:g}", "--operator", "test", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(process: subprocess.Popen[str]) -> str:
    stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 0, f"exit {process.returncode}\n{stdout[-2000:]}\n{stderr[-4000:]}"
    return stdout


def _dry_run_figures(stdout: str) -> dict[str, Any]:
    figures: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])["dry_run"]
    return figures


def _records(data_dir: Path) -> Path:
    return data_dir / "records.sqlite3"


def _product(data_dir: Path, scale: float = SCALE) -> Product:
    return product_of(_records(data_dir), 1, scale)


def _ignition_argon_s(data_dir: Path, scale: float, ar_slpm: float) -> float:
    """Process seconds the ignition's argon setpoint stood (until the ramp's first)."""
    conn = sqlite3.connect(_records(data_dir))
    try:
        argon = conn.execute(
            "SELECT t, value FROM setpoints WHERE device = 'mfc_ar' AND quantity = 'flow_slpm' "
            "ORDER BY id").fetchall()
    finally:
        conn.close()
    [at] = [i for i, (_, value) in enumerate(argon) if value == ar_slpm]
    return float((argon[at + 1][0] - argon[at][0]) * scale)


def test_two_virtual_runs_of_one_seed_leave_the_same_records(tmp_path: Path) -> None:
    runs = [_povd_run(tmp_path / name, "--virtual-time", "--seed", "5") for name in "ab"]
    for run in runs:
        _finished(run)
    first, second = (records_without_wall_clock(_records(tmp_path / n)) for n in "ab")
    assert first["passes"], "the run made no pass"
    for table, rows in first.items():
        assert rows == second[table], f"table {table} differs between two runs of one seed"


def test_the_product_is_the_scaled_runs(tmp_path: Path) -> None:
    """Passes, final diameter and layer boundaries within 0.2 %, the glass's gases (SiCl4,
    dopant) within 1 %. Not held here: Ar, O2 and N2, whose totals are set by how long the
    transitions between steps take, which in the scaled run includes the machine's own latency
    times 200 (measured: O2 5 % more in the scaled run; docs/benchmarks.md)."""
    # One after the other: the scaled run keeps real time (its heartbeat, 1 s of wall time) and
    # is not to share the CPU with the dry run.
    _finished(_povd_run(tmp_path / "virtual", "--virtual-time", "--seed", "1", recipe=LAYERS))
    _finished(_povd_run(tmp_path / "scaled", recipe=LAYERS))  # povd-sim as a child, x200
    dry, wall = _product(tmp_path / "virtual"), _product(tmp_path / "scaled")
    assert dry.passes == wall.passes == 20
    assert math.isclose(dry.final_diameter_mm, wall.final_diameter_mm, rel_tol=0.002)
    assert len(dry.layer_boundaries_mm) == len(wall.layer_boundaries_mm) == 3
    for mine, theirs in zip(dry.layer_boundaries_mm, wall.layer_boundaries_mm, strict=True):
        assert math.isclose(mine, theirs, rel_tol=0.002), (dry, wall)
    for gas in ("mfc_sicl4", "mfc_dopant"):
        assert math.isclose(dry.gas_totals_sl[gas], wall.gas_totals_sl[gas], rel_tol=0.01), (
            gas, dry.gas_totals_sl, wall.gas_totals_sl)


def test_the_argon_is_the_scaled_runs(tmp_path: Path) -> None:
    """Argon flows at ignition for as long as the step takes to see the argon settle and the
    plasma lit: the dry run reads those at a period of process time (dryrun/step_reads.py),
    so its ignition lasts what a x10 run's does, within 3 process s (1.5 sl at 30 slpm; before
    that read period, 56 process s against 4.5). The recipe's whole argon no more than 1 %
    over the x10 run's, and not below 90 % of it: the x10 run sees the argon settle and the
    plasma lit ten times its latency later in process seconds, which the dry run has not
    (measured 2026-12-08, the ramp on its schedule: 7.84 sl at x10, ignition 4.5 s, against
    7.42 sl and 4.0 s in the dry run; the x10 figure grows with the machine's load)."""
    _finished(_povd_run(tmp_path / "virtual", "--virtual-time", "--seed", "1", recipe=ARGON,
                        scale=DRY_RUN_SCALE))
    _finished(_povd_run(tmp_path / "scaled", recipe=ARGON, scale=REFERENCE_SCALE))
    dry_s = _ignition_argon_s(tmp_path / "virtual", DRY_RUN_SCALE, 30.0)
    scaled_s = _ignition_argon_s(tmp_path / "scaled", REFERENCE_SCALE, 30.0)
    assert abs(dry_s - scaled_s) <= 3.0, (dry_s, scaled_s)
    dry = _product(tmp_path / "virtual", DRY_RUN_SCALE).gas_totals_sl["mfc_ar"]
    scaled = _product(tmp_path / "scaled", REFERENCE_SCALE).gas_totals_sl["mfc_ar"]
    assert 0.9 * scaled <= dry <= 1.01 * scaled, (dry, scaled)


def test_a_fault_lands_at_its_process_time(tmp_path: Path) -> None:
    """A flame-out set for process second 310 of the simulated line (its clock starts before
    the run's homing; 310 s is in the second pass, 305-319 s, with the buses unpaced at x200)
    lands there, and the run suspends within two RF polls of it (each 1/20 s of virtual wall
    time: 10 process seconds at x200)."""
    at_s = 310.0
    stdout = _finished(_povd_run(tmp_path, "--virtual-time", "--seed", "1",
                                 "--fault", f"{at_s:g}:rf:flame_out:5"))
    [landed] = _dry_run_figures(stdout)["faults"]
    assert landed["landed_process_s"] == pytest.approx(at_s, abs=1e-6)
    conn = sqlite3.connect(_records(tmp_path))
    try:
        suspended = conn.execute(
            "SELECT t FROM state_changes WHERE to_state = 'Suspending' ORDER BY id").fetchall()
    finally:
        conn.close()
    assert suspended, "the flame-out did not suspend the run"
    reaction_process_s = (suspended[0][0] - landed["landed_epoch"]) * SCALE
    rf_poll_process_s = SCALE / 20
    assert 0 <= reaction_process_s <= 2 * rf_poll_process_s
