"""The heartbeat proves that the controller watches (rule 4): it is written by the safety
cycle only when the whole cycle (read, judge, envelope, reconcile) completed within its
period, never by a poller that merely runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from controller.config.line import load_line_config
from controller.machine.polling import Pollers
from controller.machine.telemetry import Telemetry
from tests.fakes import Call, healthy_inputs, recording_machine

LINE = load_line_config()
PERIOD_S = 1 / LINE.devices["safety_io"].poll_hz


def _machine() -> Any:
    machine = recording_machine()

    async def read() -> Any:
        machine.log.append(Call("safety_io", "read", (), {}))
        return healthy_inputs()

    machine.safety_io.read = read
    machine.line = LINE  # type: ignore[attr-defined]
    return machine


async def _beats(judge: Callable[[], None], cycles: int = 10) -> tuple[int, Pollers]:
    machine = _machine()
    pollers = Pollers(machine, Telemetry(), heartbeat_enabled=lambda: True, judge=judge)
    task = asyncio.create_task(pollers.poll_safety())
    await asyncio.sleep(PERIOD_S * cycles)
    pollers.stopping = True
    await task
    return len(machine.calls("safety_io.heartbeat")), pollers


async def test_a_completed_cycle_beats() -> None:
    beats, pollers = await _beats(lambda: None)
    assert beats >= 3 and pollers.beats == beats


async def test_a_cycle_whose_judgement_fails_does_not_beat() -> None:
    def broken() -> None:
        raise RuntimeError("judgement failed")

    beats, _ = await _beats(broken)
    assert beats == 0


async def test_a_cycle_late_past_its_period_does_not_beat() -> None:
    def slow() -> None:
        time.sleep(PERIOD_S * 1.5)  # a starved or stuck cycle, as the PLC would see it

    beats, pollers = await _beats(slow)
    assert beats == 0 and pollers.late_cycles >= 2
