"""The simulator process dies mid-run (kill -9 of povd-sim: every link drops at once, as when
the machine's network or its PLC rack goes): the controller trips to its safe state with a
lost-link alarm as first-out, records it, and keeps running. A povd-sim started again comes
up on new ports: today the controller does not follow it (the endpoints are read once at
start), so its links stay lost and the run stays Aborted until an operator restarts the
controller against the new endpoints; nothing restarts by itself (rule 10)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from controller.cli.records_commands import legal_transitions
from controller.config.line import load_line_config
from controller.machine.devices import build_machine, load_endpoints
from controller.recipes.loading import load_recipe
from controller.recipes.planning import plan_from_recipe
from controller.records.run_records import RecordsReader, RunHeader, RunRecords
from controller.records.verify import verify_records
from controller.run.process_clock import ProcessClock
from controller.run.supervisor import Supervisor
from controller.safety.states import State
from tests.system.rig import RECIPES, TIME_SCALE

pytestmark = pytest.mark.slow

LINK_TRIPS = {"link_rf", "link_safety_io", "link_drives", "link_plasma_gas"}


@contextmanager
def povd_sim(tmp_path: Path, name: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    endpoints = tmp_path / f"{name}.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.serve", "serve", "--time-scale", str(TIME_SCALE),
         "--no-pty", "--endpoints-json", str(endpoints)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not endpoints.exists():
            assert time.monotonic() < deadline, "povd-sim did not start"
            assert proc.poll() is None, "povd-sim exited"
            time.sleep(0.05)
        yield proc, endpoints
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def controller(endpoints: Path, db: Path) -> AsyncIterator[Supervisor]:
    line = load_line_config()
    async with RunRecords(db, line=line.line) as records:
        sup = Supervisor(build_machine(line, load_endpoints(endpoints)), records,
                         clock=ProcessClock(TIME_SCALE))
        async with sup:
            assert not await sup.wait_links(30)
            await sup.make_idle("test")
            await sup.reset_controller_loss("test")
            assert not await sup.wait_healthy(30)
            yield sup


async def test_the_simulator_dying_trips_to_safe_and_the_controller_lives_on(
        tmp_path: Path) -> None:
    db = tmp_path / "records.sqlite3"
    line = load_line_config()
    with povd_sim(tmp_path, "first") as (sim, endpoints):
        async with controller(endpoints, db) as sup:
            recipe = load_recipe(RECIPES / "long.yaml", line)
            header = RunHeader(recipe_name=recipe.name, recipe_text=recipe.text,
                               line=line.line, machine=line.machine, operator="alice")
            started = await sup.command("start", "alice", plan=plan_from_recipe(recipe, line),
                                        header=header)
            assert started.accepted, started.reason

            def depositing() -> bool:
                ex = sup.executor
                return (sup.sm.state is State.EXECUTE and ex is not None
                        and ex.current_op == "deposit" and ex.cursor.passes_done >= 1)

            await until(depositing, 90, "deposition")
            run_id = sup.run_id
            os.kill(sim.pid, signal.SIGKILL)
            sim.wait(timeout=10)

            await until(lambda: sup.sm.state is State.ABORTED, 60, "Aborted")
            first_out = next(a for a in sup.alarms.active() if a.first_out)
            assert first_out.definition.id in LINK_TRIPS, first_out.definition.id
            assert sup.trip_cause in LINK_TRIPS, sup.trip_cause
            # Rule 9: what the controller did is on disk.
            await sup.record_flush()
            detail = RecordsReader(db).get_run(run_id or 0)
            assert detail is not None and detail.run.outcome is not None
            assert detail.run.outcome.value == "aborted"
            assert any(a.alarm_id == first_out.definition.id and a.first_out
                       for a in detail.alarms)
            assert [s.to_state for s in detail.states][-2:] == ["Aborting", "Aborted"]

            # A povd-sim started again listens on new ports: the controller keeps running
            # (its safety cycle, its status) with every link still lost and the run Aborted.
            with povd_sim(tmp_path, "second"):
                await asyncio.sleep(3.0)  # longer than any link timeout: nothing comes back
                status = sup.status()
                assert status["state"] == "Aborted"
                assert not sup.link_alive("rf") and not sup.link_alive("safety_io")
                assert all(not task.done() for task in asyncio.all_tasks()
                           if task.get_name() in {"records", "telemetry", "rest-keeper"})
                clear = await sup.command("clear", "alice")
                assert not clear.accepted  # the trip's cause (the links) has not gone
    result = verify_records(db, legal_transitions())
    assert result.ok, result.all_findings
