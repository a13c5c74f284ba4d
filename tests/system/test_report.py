"""The run report (issue 10) of real runs on the simulated line: the HTML page and the CSV
export from the records a run leaves (samples and passes of a whole recipe), written by
`povd runs report ID --html FILE --csv DIR` with no service; and `povd run` whose output
nobody reads (piped into `head`, which has exited) still runs its recipe to the end."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.config.line import load_line_config
from controller.records.reader import RecordsReader
from controller.records.report_csv import PASS_COLUMNS, passes_filename, samples_filename
from controller.records.schema import Outcome, RunDetail
from controller.safety.states import State
from controller.service.reports.plot_data import plot_data
from tests.integration.test_report_html import check_report
from tests.system.rig import RECIPES, Rig, line_rig
from tests.waiting import eventually

pytestmark = pytest.mark.slow

CLI_S = 120.0  # a CLI's start-up and a report, on a loaded machine
RUN_S = 300.0  # povd run: povd-sim as a child, links, the quick recipe at x200, the cool-down


def povd(data_dir: Path, *args: str, stdout: int | None = subprocess.PIPE,
         timeout_s: float = CLI_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "--data-dir", str(data_dir), *args],
        stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout_s, check=False)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """Telemetry recorded at 20 Hz of wall time: the quick run lasts seconds at x200, and its
    plots need the lit plasma in them."""
    base = load_line_config()
    line = base.model_copy(update={"supervision": base.supervision.model_copy(
        update={"telemetry_record_hz": 20.0})})
    async with line_rig(tmp_path, line=line) as r:
        yield r


async def test_a_real_runs_report_as_html_and_csv(rig: Rig, tmp_path: Path) -> None:
    result = await rig.start("quick")
    assert result.accepted, result.reason
    await rig.sup.finished.wait()
    assert rig.sup.sm.state is State.COMPLETE
    run_id = rig.sup.run_id or 0
    reader = rig.reader()

    async def recorded() -> RunDetail | None:
        await rig.records.flush()  # the telemetry batched so far
        return reader.get_run(run_id)

    detail = await eventually(
        recorded, lambda d: d is not None and d.run.outcome is Outcome.COMPLETE
        and bool(d.states) and d.states[-1].to_state == "Complete",
        timeout_s=30, what="the run's end in the records")
    assert detail is not None
    samples = reader.telemetry(run_id)
    assert len(samples) > 5 and len(detail.passes) == 4

    # What the plots show is what the run did: the plasma's power, every gas, the spindle,
    # the carriage and the gauge; each pass's diameter against the plan.
    plots = {p.key: p for p in plot_data(samples, detail.passes).plots}
    for key in ("power", "gases", "precursors", "spindle", "traverse", "diameter"):
        assert not plots[key].empty, key
    forward = [v for v in plots["power"].series[0].values if v is not None]
    assert max(forward) > 10  # kW: the plasma was lit
    measured, plan, boundary = plots["per-pass"].series
    assert measured.values == [p.diameter_mm for p in detail.passes]
    assert plan.values[1::2] == boundary.values[1::2]  # two passes a layer: the last at it
    assert all(v is not None and v > rig.line.geometry.bait_rod_diameter_mm
               for v in plan.values)

    out_dir = tmp_path / "export"
    html = out_dir / "report.html"
    out_dir.mkdir()
    done = povd(rig.db.parent, "runs", "report", str(run_id), "--html", str(html),
                "--csv", str(out_dir))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    page = check_report(html.read_text(encoding="utf-8"), detail, samples)
    facts = {row[0]: row[1] for row in page.tables["facts"]}
    assert facts["Preform serial"] == "T-1"
    assert facts["Outcome"] == "complete" and facts["First-out cause"] == "none"
    assert [r[2] for r in page.tables["timeline"][1:]][-2:] == ["Completing", "Complete"]

    with (out_dir / samples_filename(run_id)).open(newline="") as f:
        sample_rows = list(csv.DictReader(f))
    assert len(sample_rows) == len(samples)
    assert float(sample_rows[0]["t"]) == samples[0][0]
    assert {"rf.forward_kw", "mfcs.mfc_sicl4.mass_slpm", "axes.carriage.velocity",
            "gauge.diameter_mm"} <= set(sample_rows[0])
    with (out_dir / passes_filename(run_id)).open(newline="") as f:
        pass_rows = list(csv.reader(f))
    assert pass_rows[0] == list(PASS_COLUMNS)
    assert [int(r[1]) for r in pass_rows[1:]] == [p.pass_index for p in detail.passes]


def test_povd_run_into_a_closed_pipe_still_runs_to_the_end(tmp_path: Path) -> None:
    """`povd run ... | head -1`: once head has gone, every line goes nowhere, and the run
    carries on to Complete and the machine to rest (rule 11), instead of ending at its first
    line with the plasma lit."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = povd(tmp_path, "run", str(RECIPES / "quick.yaml"), "--sim", "--time-scale",
                    "200", "--serial", "P-PIPE", stdout=write_end, timeout_s=RUN_S)
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr, done.stderr
    # Supervised to its recorded end: complete (0), or, on a machine loaded enough to trip
    # the run, ended otherwise (1); never dropped at the first line (141, no outcome).
    assert done.returncode in {0, 1}, done.stderr
    (run,) = RecordsReader(tmp_path / "records.sqlite3").list_runs()
    assert run.preform_serial == "P-PIPE"
    assert run.outcome is (Outcome.COMPLETE if done.returncode == 0 else Outcome.ABORTED), (
        run.outcome, done.stderr)
