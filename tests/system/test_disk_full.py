"""The disk fills up mid-run (rule 9): the run is held safely with the records alarm, and
nothing is acknowledged that is not durable: a command that would make glass is refused, and
every pass the controller announced is in the file.

The full disk is SQLite's own: ``PRAGMA max_page_count`` caps the file where it stands, so the
next page a write needs fails with SQLITE_FULL ("database or disk is full"), the error a full
filesystem gives, through the real writer, with no mount or root needed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from controller.cli.records_commands import legal_transitions
from controller.records.verify import verify_records
from controller.safety.states import State
from tests.system.rig import line_rig

pytestmark = pytest.mark.slow


class DiskFills:
    """A connection factory whose connections stop growing once ``full`` is set."""

    def __init__(self) -> None:
        self.full = threading.Event()
        self.errors: list[str] = []
        factory = self

        class CappedConnection(sqlite3.Connection):
            capped = False

            def execute(self, sql: str, params: Any = (), /) -> sqlite3.Cursor:
                if factory.full.is_set() and not self.capped and sql == "BEGIN IMMEDIATE":
                    (pages,) = super().execute("PRAGMA page_count").fetchone()
                    super().execute(f"PRAGMA max_page_count = {pages}")
                    self.capped = True
                try:
                    return super().execute(sql, params)
                except sqlite3.OperationalError as exc:
                    factory.errors.append(str(exc))
                    raise

        self._connection = CappedConnection

    def connect(self, path: Path) -> sqlite3.Connection:
        return sqlite3.connect(path, isolation_level=None, factory=self._connection)


async def test_a_full_disk_holds_the_run_and_acknowledges_nothing_it_cannot_keep(
        tmp_path: Path) -> None:
    disk = DiskFills()
    async with line_rig(tmp_path, records_connect=disk.connect) as rig:
        announced = rig.sup.fanout.subscribe()
        assert (await rig.start("long")).accepted
        await rig.wait_depositing(passes_done=2)
        disk.full.set()
        await rig.wait_state(State.HOLDING, State.HELD, timeout_s=30)
        assert any("full" in e for e in disk.errors), disk.errors
        assert rig.sup.alarms.status("records_unavailable").condition
        await rig.wait_for(lambda: rig.sim.plant.sicl4_g_min < 0.5, 10, "SiCl4 off")
        assert not rig.sim.plant.precursor_valve_open
        assert rig.sim.plant.spindle_rpm > 5  # the rod keeps turning
        await rig.wait_state(State.HELD, timeout_s=30)
        unhold = await rig.sup.command("unhold", "alice")
        assert not unhold.accepted, "unhold acknowledged without a durable record"
        stop = await rig.sup.command("stop", "alice")
        assert stop.accepted, stop.reason  # what makes the line safer still goes
        await rig.wait_state(State.STOPPED, timeout_s=60)
        # Every pass the controller announced (after its record, by design) is on disk.
        passes: list[int] = []
        while not announced.empty():
            item = announced.get_nowait()
            if item.get("kind") == "pass":
                passes.append(int(item["passes_done"]))
        run_id = rig.sup.run_id
        rig.sup.fanout.unsubscribe(announced)
        recorded = await asyncio.to_thread(rig.reader().get_run, run_id or 0)
        assert recorded is not None
        assert passes, "no pass announced before the disk filled"
        assert set(passes) <= {p.pass_index for p in recorded.passes}
        disk.full.clear()
    # What did reach the disk is whole.
    result = verify_records(rig.db, legal_transitions(), run_id=run_id)
    findings = [f for f in result.all_findings if f.check != "rows" or "events" not in f.detail]
    assert not [f for f in findings if f.check in {"sequence", "passes", "states"}], findings
