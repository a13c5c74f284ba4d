"""A whole line under test: the simulated machine (in-process, on real sockets), the
controller's supervisor connected to it over the real protocols, and run records on disk."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from controller.config.line import LineConfig, load_line_config
from controller.machine.devices import build_machine
from controller.recipes.loading import load_recipe
from controller.recipes.planning import plan_from_recipe
from controller.records.run_records import RecordsReader, RunHeader, RunRecords
from controller.records.writer import Connect
from controller.run.commands import CommandResult
from controller.run.process_clock import ProcessClock
from controller.run.supervisor import Supervisor
from controller.safety.states import State
from simulators.line import LineSimulator

RECIPES = Path(__file__).parent / "recipes"
TIME_SCALE = 200.0


@dataclass
class Rig:
    line: LineConfig
    sim: LineSimulator
    sup: Supervisor
    records: RunRecords
    db: Path

    async def start(self, recipe: str = "quick", operator: str = "alice") -> CommandResult:
        path = RECIPES / f"{recipe}.yaml" if "/" not in recipe else Path(recipe)
        loaded = load_recipe(path, self.line)
        header = RunHeader(recipe_name=loaded.name, recipe_text=loaded.text, line=self.line.line,
                           machine=self.line.machine, operator=operator, preform_serial="T-1")
        return await self.sup.command("start", operator, plan=plan_from_recipe(loaded, self.line),
                                      header=header)

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float = 30.0,
                       what: str = "condition") -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                state = self.sup.sm.state.value
                raise AssertionError(f"timed out waiting for {what}; state {state}, "
                                     f"plant {self.sim.plant.snapshot()}")
            await asyncio.sleep(0.01)

    async def wait_state(self, *states: State, timeout_s: float = 30.0) -> None:
        await self.wait_for(lambda: self.sup.sm.state in states, timeout_s,
                            f"state in {[s.value for s in states]}")

    async def wait_depositing(self, passes_done: int = 1) -> None:
        """Until the run is in Execute, plasma lit, SiCl4 flowing and some passes done."""
        def depositing() -> bool:
            ex = self.sup.executor
            return (self.sup.sm.state is State.EXECUTE and ex is not None
                    and ex.current_op == "deposit" and ex.cursor.passes_done >= passes_done
                    and self.sim.plant.plasma_lit and self.sim.plant.sicl4_g_min > 1)
        await self.wait_for(depositing, 60, "deposition")

    def reader(self) -> RecordsReader:
        return RecordsReader(self.db)


def rig_line() -> LineConfig:
    """The demo line as the rig runs it: the simulator shares the controller's event loop here
    (on a line PC it is the machine, or povd-sim's own process), so its x200 ticks add to the
    loop's lag; under CI load that reached 0.3 s. The loop-lag hold waits 0.6 s here (the PLC's
    heartbeat timeout, 1 s, stays the backstop)."""
    line = load_line_config()
    return line.model_copy(update={"supervision": line.supervision.model_copy(
        update={"max_safety_gap_s": RIG_MAX_SAFETY_GAP_S})})


RIG_MAX_SAFETY_GAP_S = 0.6


@asynccontextmanager
async def line_rig(
    tmp_path: Path, *, time_scale: float = TIME_SCALE, records_connect: Connect | None = None,
    line: LineConfig | None = None,
) -> AsyncIterator[Rig]:
    line = line or rig_line()
    db = tmp_path / "records.sqlite3"
    async with LineSimulator(line, time_scale=time_scale, serve_ptys=False) as sim:
        machine = build_machine(line, sim.endpoints())
        extra = {} if records_connect is None else {"connect": records_connect}
        async with RunRecords(db, line=line.line, **extra) as records:
            sup = Supervisor(machine, records, clock=ProcessClock(time_scale))
            async with sup:
                await ready(sup, "test")
                yield Rig(line, sim, sup, records, db)


async def ready(sup: Supervisor, source: str) -> None:
    """Every link up, the idle posture written, nothing blocking a start: a line to test on."""
    missing = await sup.wait_links(15)
    assert not missing, f"no link to {missing}"
    await sup.make_idle(source)
    blockers = await sup.wait_healthy(10)
    assert not blockers, blockers
