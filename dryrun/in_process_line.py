"""The simulated line in the dry run's own process: ``LineSimulator`` on the loop's (virtual)
clock, its serial buses served on loopback TCP (the same codecs and bytes as on the
pseudo-terminals: a pty's bytes cross a kernel work queue, so a read could miss a frame still
in flight when the clock jumps), seeded, with faults injected at given process times."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog

from controller.cli.run_command import MachineSource
from controller.config.line import LineConfig
from simulators.faults import ALL_FAULTS
from simulators.line import LineSimulator

log = structlog.get_logger(__name__)

# The dry run's default time scale. Poll rates, link timeouts, the heartbeat and the serial
# buses' baud rates stay per (virtual) wall second, as in any scaled run (rule 7; the readings
# that end a step excepted: dryrun/step_reads.py), so the CPU a run takes falls with the scale
# while the plant's physics (fixed process sub-steps) do not: x400 puts the 100-pass recipe
# under a minute; what it changes in the product and why, with the figures against x10:
# docs/benchmarks.md.
DEFAULT_TIME_SCALE = 400.0


@dataclass(frozen=True)
class ScheduledFault:
    """A fault to inject at a process second of the simulated line (its clock starts with it)."""

    at_process_s: float
    device: str
    kind: str
    for_process_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> ScheduledFault:
        """``AT:DEVICE:KIND[:FOR]``, AT and FOR in process seconds."""
        parts = text.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"--fault wants AT:DEVICE:KIND[:FOR], got {text!r}")
        if parts[2] not in ALL_FAULTS:
            raise ValueError(f"--fault: unknown kind {parts[2]!r}; known: {sorted(ALL_FAULTS)}")
        duration = float(parts[3]) if len(parts) == 4 else None
        return cls(float(parts[0]), parts[1], parts[2], duration)


def seeded(line: LineConfig, seed: int | None) -> LineConfig:
    """The line with the plant's seed replaced (the gauge's noise derives from it)."""
    if seed is None:
        return line
    return line.model_copy(update={"plant": {**line.plant, "seed": seed}})


@dataclass(frozen=True)
class LandedFault:
    fault: ScheduledFault
    process_s: float  # on the simulated line's process clock
    epoch: float  # on the records' clock (time.time, virtual in the dry run)


def in_process_line(seed: int | None, faults: list[ScheduledFault],
                    landed: list[LandedFault]) -> MachineSource:
    """The machine source for run_recipe; each fault that lands is appended to ``landed``."""
    @contextlib.asynccontextmanager
    async def source(args: argparse.Namespace, line: LineConfig) -> AsyncIterator[
        dict[str, Any] | None
    ]:
        scale = args.time_scale or DEFAULT_TIME_SCALE
        async with LineSimulator(seeded(line, seed), time_scale=scale, serve_ptys=False) as sim:
            pending = [_schedule(sim, fault, landed) for fault in faults]
            try:
                yield sim.endpoints()
            finally:
                for handle in pending:  # the run ended before they were due
                    handle.cancel()

    return source


def _schedule(sim: LineSimulator, fault: ScheduledFault,
              landed: list[LandedFault]) -> asyncio.TimerHandle:
    scale = sim.time_scale
    delay_wall = max(0.0, fault.at_process_s - sim.clock.process()) / scale
    duration_wall = None if fault.for_process_s is None else fault.for_process_s / scale

    def inject() -> None:
        sim.faults.inject(fault.device, fault.kind, duration_s=duration_wall)
        landed.append(LandedFault(fault, sim.clock.process(), time.time()))
        log.warning("dry_run.fault_injected", device=fault.device, kind=fault.kind,
                    process_s=landed[-1].process_s)

    return asyncio.get_running_loop().call_later(delay_wall, inject)
