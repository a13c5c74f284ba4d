"""Rule 9 when the disk stalls rather than fails: a record that does not reach the disk within
``records_timeout_s`` holds the run with an alarm; stop and abort act at once, never queueing
behind a command stuck on the disk, and their answer says the record is pending; a command
whose record could not be written is never acknowledged."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from controller.records.writer import Connect
from controller.safety.states import State
from controller.service.line_service import LineService
from tests.system.rig import RIG_MAX_SAFETY_GAP_S, line_rig
from tests.system.test_service import user_store

pytestmark = pytest.mark.slow


class Stall:
    """A disk that stops answering: every commit waits until released."""

    def __init__(self) -> None:
        self.on = threading.Event()
        self.release = threading.Event()

    def connect(self) -> Connect:
        stall = self

        class StallingConnection(sqlite3.Connection):
            def execute(self, sql: str, params: Any = (), /) -> sqlite3.Cursor:
                if stall.on.is_set() and sql.startswith("COMMIT"):
                    stall.release.wait(60)
                return super().execute(sql, params)

        def connect(path: Path) -> sqlite3.Connection:
            return sqlite3.connect(path, isolation_level=None, factory=StallingConnection)
        return connect

    @contextmanager
    def stalled(self) -> Iterator[None]:
        self.on.set()
        try:
            yield
        finally:
            self.on.clear()
            self.release.set()  # the teardown writes what it can


async def test_a_stalled_disk_holds_the_run_with_an_alarm(tmp_path: Path) -> None:
    stall = Stall()
    async with line_rig(tmp_path, records_connect=stall.connect()) as rig:
        assert rig.line.supervision.records_timeout_s == 2.0
        assert (await rig.start("long")).accepted
        await rig.wait_depositing(passes_done=1)
        with stall.stalled():
            # The next awaited record (the pass at its end) waits 2 s at most: then the run
            # holds, the precursors off, the rod turning (the executor never hangs on a disk).
            await rig.wait_state(State.HOLDING, State.HELD, timeout_s=20)
            assert rig.sup.alarms.status("records_unavailable").condition
            await rig.wait_for(lambda: rig.sim.plant.sicl4_g_min < 0.5, 10, "SiCl4 off")
            assert not rig.sim.plant.precursor_valve_open
            assert rig.sim.plant.spindle_rpm > 5
            await rig.wait_state(State.HELD, timeout_s=20)
            unhold = await rig.sup.command("unhold", "alice")
            assert not unhold.accepted
            assert "records unavailable" in (unhold.reason or "")


async def test_a_stop_never_queues_behind_a_command_stuck_on_the_disk(tmp_path: Path) -> None:
    stall = Stall()
    async with line_rig(tmp_path, records_connect=stall.connect()) as rig:
        service = LineService(rig.sup, user_store(tmp_path), rig.db)
        assert (await rig.start("long")).accepted
        await rig.wait_depositing(passes_done=1)
        with stall.stalled():
            # A trim waits on its record (2 s) holding the service's lock...
            trim = asyncio.create_task(service.execute("olga", "trim", {"power_kw": 1.0}))
            await asyncio.sleep(0.05)
            # ... and a stop acts while it waits: it cuts in like a trip (rule 9).
            stop = asyncio.create_task(service.execute("olga", "stop", {}))
            await rig.wait_for(
                lambda: rig.sup.sm.state in (State.STOPPING, State.STOPPED), 5, "stopping")
            assert not trim.done(), "the stop waited for the trim"
            stop_reply = await stop
            assert stop_reply.accepted, stop_reply.reason
            assert stop_reply.data.get("record") == "pending"
            # The trim was carried out but not recorded: it is not acknowledged.
            trim_reply = await trim
            assert not trim_reply.accepted
            assert "could not be recorded" in (trim_reply.reason or "")
            assert rig.sup.alarms.status("records_unavailable").condition
            await rig.wait_state(State.STOPPED, timeout_s=30)
        # Once the disk answers, the stop's record is there.
        await rig.wait_for(lambda: any(
            e.kind == "command" and e.payload.get("command") == "stop"
            for e in rig.reader().events_since(0, line=rig.line.line)), 10, "stop recorded")


async def test_a_starved_event_loop_holds_the_run(tmp_path: Path) -> None:
    """A request that keeps the loop busy (the alias-bomb recipe did) stops the controller
    watching the machine: past max_safety_gap_s the run holds with an alarm."""
    async with line_rig(tmp_path) as rig:
        assert (await rig.start("long")).accepted
        await rig.wait_depositing(passes_done=1)
        assert not rig.sup.alarms.status("safety_cycle_starved").condition
        assert rig.line.supervision.max_safety_gap_s == RIG_MAX_SAFETY_GAP_S < 0.8
        time.sleep(0.8)  # the point: nothing else on the loop runs meanwhile (PLC: 1 s)
        await rig.wait_state(State.HOLDING, State.HELD, timeout_s=20)
        alarm = rig.sup.alarms.status("safety_cycle_starved")
        assert alarm.state.value != "normal", alarm
        assert rig.sup.alarms.status("safety_cycle_late").condition
        assert rig.sup.cycle_watchdog.worst_gap_s >= 0.8
