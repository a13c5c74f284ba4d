"""kill -9 of the controller while a separate povd-sim keeps the machine: the next start is
refused until the interrupted run is resumed (or abandoned); --resume continues from the last
completed pass and nothing recorded is lost."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.records.run_records import RecordsReader, RecordsUnavailable
from tests.system.sim_process import povd_sim, wait_until

pytestmark = pytest.mark.slow

RECIPE = Path(__file__).parent / "recipes" / "long.yaml"


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Path]:
    with povd_sim(tmp_path, time_scale=200) as endpoints:
        yield endpoints


def _povd(data_dir: Path, *args: str, **kwargs) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    return subprocess.Popen(
        [sys.executable, "-m", "controller.cli.main", "--data-dir", str(data_dir), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        **kwargs,
    )


def _plant(endpoints: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "simulators.serve", "status", "--endpoints", str(endpoints)],
        capture_output=True, text=True, check=True, timeout=30,
    )
    plant: dict[str, object] = json.loads(out.stdout)["plant"]
    return plant


def test_kill_9_then_resume_from_the_last_pass(tmp_path: Path, simulator: Path) -> None:
    data = tmp_path / "data"
    db = data / "records.sqlite3"
    controller = _povd(data, "run", str(RECIPE), "--endpoints", str(simulator),
                       "--serial", "P-42", "--operator", "dana")

    def passes() -> int:
        try:
            runs = RecordsReader(db).list_runs()
        except (RecordsUnavailable, sqlite3.OperationalError):
            return 0  # not created yet
        detail = RecordsReader(db).get_run(runs[0].id) if runs else None
        return len(detail.passes) if detail else 0

    try:
        wait_until(lambda: passes() >= 3, 90, "three passes")
    finally:
        os.kill(controller.pid, signal.SIGKILL)
        controller.communicate(timeout=10)
    run_id = RecordsReader(db).list_runs()[0].id
    recorded_before = passes()
    # Without a controller the heartbeat stops and the safety PLC drops the RF enable.
    wait_until(lambda: _plant(simulator)["rf_enable"] is False, 10, "the PLC to drop RF enable")

    refused = _povd(data, "run", str(RECIPE), "--endpoints", str(simulator))
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 3, err
    assert f"run {run_id}" in err and "--resume" in err and "--abandon" in err

    resumed = _povd(data, "run", str(RECIPE), "--endpoints", str(simulator),
                    "--resume", str(run_id), "--operator", "dana")
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, out + err
    assert "last commanded vs now" in out  # reconciled after the safe state
    detail = RecordsReader(db).get_run(run_id)
    assert detail is not None and detail.run.outcome is not None
    assert detail.run.outcome.value == "complete"
    indices = [p.pass_index for p in detail.passes]
    assert indices == list(range(1, 41)), indices  # every pass once, in order, none lost
    assert recorded_before <= len(indices)
    assert detail.run.preform_serial == "P-42"
    assert RecordsReader(db).interrupted_runs() == []
    report = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "--data-dir", str(data), "runs", "report",
         str(run_id), "--json"], capture_output=True, text=True, check=True, timeout=60,
    )
    summary = json.loads(report.stdout)
    assert summary["outcome"] == "complete"
    assert summary["passes"] == 40
    assert summary["preform_serial"] == "P-42"
    assert summary["final_diameter_mm"] > 30
    # The report per layer spans the crash: one layer, its 40 passes, its boundary the last.
    (layer,) = summary["layers"]
    assert (layer["name"], layer["passes"], layer["planned_passes"], layer["complete"]) == (
        "base", 40, 40, True)
    assert layer["measured_boundary_mm"] == summary["final_diameter_mm"]
    assert layer["planned_boundary_mm"] > 30 and layer["boundary_error_pct"] is not None


def test_a_second_controller_for_the_same_line_is_refused(tmp_path: Path, simulator: Path) -> None:
    data = tmp_path / "data"
    first = _povd(data, "run", str(RECIPE), "--endpoints", str(simulator))
    try:
        wait_until((data / "line1.lock").exists, 30, "the line lock")
        time.sleep(0.5)
        second = _povd(data, "run", str(RECIPE), "--endpoints", str(simulator))
        _, err = second.communicate(timeout=60)
        assert second.returncode == 3
        assert "another controller" in err
    finally:
        first.send_signal(signal.SIGTERM)  # without a terminal: hold, then a controlled stop
        out, err = first.communicate(timeout=120)
    assert first.returncode == 1, out + err  # ended, but not complete
    runs = RecordsReader(data / "records.sqlite3").list_runs()
    assert runs and runs[0].outcome is not None and runs[0].outcome.value == "stopped"


def _fault(endpoints: Path, device: str, kind: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "simulators.serve", "fault", "--endpoints", str(endpoints),
         device, kind], capture_output=True, text=True, check=True, timeout=30)


def test_a_dead_controller_leaves_the_hardware_to_reach_rest(tmp_path: Path,
                                                             simulator: Path) -> None:
    """Rule 11: kill -9 while depositing; the PLC's heartbeat-loss logic and the drives'
    watchdogs bring the machine to rest without any controller."""
    data = tmp_path / "data"
    controller = _povd(data, "run", str(RECIPE), "--endpoints", str(simulator))
    try:
        wait_until(lambda: _plant(simulator)["precursor_valve_open"] is True
              and float(_plant(simulator)["carriage_mm"]) > 310, 90, "deposition")  # type: ignore[arg-type]
    finally:
        os.kill(controller.pid, signal.SIGKILL)
        controller.communicate(timeout=10)
    wait_until(lambda: _plant(simulator)["rf_enable"] is False, 10, "the PLC to drop RF enable")
    plant = _plant(simulator)
    assert plant["precursor_valve_open"] is False, "precursor valve closed with the RF"
    assert plant["heaters_on"] == [False, False]
    assert plant["exhaust_fan_on"] is True
    # The master valve after the PLC's purge (60 s of process time: 0.3 s at x200).
    wait_until(lambda: _plant(simulator)["master_valve_open"] is False, 10, "master valve closed")
    # The carriage stops by its drive's watchdog; the spindle keeps the rod turning.
    first = float(_plant(simulator)["carriage_mm"])  # type: ignore[arg-type]
    time.sleep(1.0)
    plant = _plant(simulator)
    assert abs(float(plant["carriage_mm"]) - first) < 0.5, "the carriage has stopped"  # type: ignore[arg-type]
    assert abs(float(plant["spindle_rpm"]) - 10.0) < 1.0, "the spindle at cooling speed"  # type: ignore[arg-type]


def test_povd_run_exits_only_once_the_machine_is_at_rest(tmp_path: Path,
                                                         simulator: Path) -> None:
    """Rule 11: after a trip, `povd run` finishes the sequence before it exits."""
    data = tmp_path / "data"
    controller = _povd(data, "run", str(RECIPE), "--endpoints", str(simulator))
    try:
        wait_until(lambda: _plant(simulator)["precursor_valve_open"] is True, 90, "deposition")
        _fault(simulator, "safety_io", "water_flow_low")
        out, err = controller.communicate(timeout=120)
    finally:
        if controller.poll() is None:
            controller.kill()
    assert controller.returncode == 1, out + err
    assert "ended: Aborted" in out and "machine at rest" in out
    plant = _plant(simulator)
    assert plant["master_valve_open"] is False
    assert all(v < 0.2 for v in plant["gas_flow_slpm"].values()), plant  # type: ignore[union-attr]
    assert plant["rf_on"] is False
    assert float(plant["rod_temperature_c"]) <= 300  # type: ignore[arg-type]
    assert abs(float(plant["spindle_rpm"])) < 0.5  # type: ignore[arg-type]
