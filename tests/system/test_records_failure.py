"""Rule 9: if the records cannot be written (disk full, I/O error), the run is held safely
with an alarm: the controller does not make glass it cannot account for."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from controller.safety.states import State
from tests.system.rig import line_rig

pytestmark = pytest.mark.slow


async def test_a_failing_disk_holds_the_run_with_an_alarm(tmp_path: Path) -> None:
    failing = threading.Event()

    class FlakyConnection(sqlite3.Connection):
        def execute(self, sql: str, params: Any = (), /) -> sqlite3.Cursor:
            if failing.is_set() and sql.startswith(("INSERT", "UPDATE", "COMMIT")):
                raise sqlite3.OperationalError("disk I/O error")
            return super().execute(sql, params)

    def connect(path: Path) -> sqlite3.Connection:
        return sqlite3.connect(path, isolation_level=None, factory=FlakyConnection)

    async with line_rig(tmp_path, records_connect=connect) as rig:
        assert (await rig.start("long")).accepted
        await rig.wait_depositing(passes_done=1)
        failing.set()
        await rig.wait_state(State.HOLDING, State.HELD, timeout_s=20)
        await rig.wait_for(lambda: rig.sim.plant.sicl4_g_min < 0.5, 10, "SiCl4 off")
        assert rig.sup.alarms.status("records_unavailable").condition
        assert not rig.sim.plant.precursor_valve_open
        assert rig.sim.plant.spindle_rpm > 5
        await rig.wait_state(State.HELD, timeout_s=20)
        # Nothing that makes glass goes ahead unrecorded; what makes the line safer does.
        unhold = await rig.sup.command("unhold", "alice")
        assert not unhold.accepted
        assert "records unavailable" in (unhold.reason or "")
        stop = await rig.sup.command("stop", "alice")
        assert stop.accepted, stop.reason
        await rig.wait_state(State.STOPPED, timeout_s=30)
        failing.clear()  # let the teardown write what it can
