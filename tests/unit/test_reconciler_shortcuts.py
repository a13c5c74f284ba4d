"""The reconciler's shortcuts (alarm levels told only when they change, a gas group's "any
outside" answered at once while nothing is outside, the follow alarms' scan skipped while
nothing is outside, the flow tolerances taken once from the line) against the full path: the
same corrections, in the same order, the same alarm levels, escalations and follow state,
cycle after cycle, over seeded random sequences of envelopes, setpoints, readings, link
health and time."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine, Iterator, Mapping
from typing import Any

import pytest

from controller.config.line import LINEAR_AXES, LineConfig, load_line_config
from controller.machine.telemetry import Telemetry
from controller.safety.envelope import Envelope, EnvelopeInputs, compute
from controller.safety.reconciler import FOLLOW_ALARMS, GASES, Reconciler
from controller.safety.states import Mode, State
from controller.safety.writer import Actuators
from drivers.codecs.servo_map import AxisMode, AxisStatus
from drivers.mfc import MfcReading
from drivers.rf_generator import RfStatus
from drivers.safety_io import SafetyOutputs
from tests.fakes import healthy_inputs, recording_machine

LINE = load_line_config()
TIMEOUT = LINE.supervision.follow_timeout_s
AXES = (*LINEAR_AXES, "spindle")
LINKED = ("safety_io", "rf", *AXES)
ENVELOPES = [
    compute(EnvelopeInputs(**inputs), LINE) for inputs in (
        {"state": State.EXECUTE, "plasma_lit": True, "rod_temperature_c": 600.0,
         "master_valve_open": True},
        {"state": State.EXECUTE, "rod_temperature_c": 20.0},
        {"state": State.ABORTED, "conditions": frozenset({"gas_detected"}),
         "rod_temperature_c": 600.0},
        {"state": State.ABORTED, "rod_temperature_c": 25.0},
        {"state": State.IDLE},
        {"state": State.IDLE, "mode": Mode.MAINTENANCE, "doors_closed": False,
         "rod_temperature_c": 25.0},
        {"state": State.STARTING, "master_valve_open": True, "rod_temperature_c": 300.0},
    )
]


class _Tolerances(Mapping[str, float]):
    """The full path's flow tolerance: from the line's MFC, every time it is asked."""

    def __init__(self, line: LineConfig) -> None:
        self.line = line

    def __getitem__(self, name: str) -> float:
        return 0.02 * self.line.mfc(name).full_scale_slpm + 0.05

    def __iter__(self) -> Iterator[str]:
        return iter(GASES)

    def __len__(self) -> int:
        return len(GASES)


class FullPath(Reconciler):
    """The reconciler with every shortcut taken out, as it was written before them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flow_tolerance = _Tolerances(self.line)

    def _any_outside(self, names: tuple[str, ...]) -> bool:
        return any(n in self._outside_since for n in names)

    def _annunciate(self, now: float) -> None:
        late = {FOLLOW_ALARMS[k] for k, since in self._outside_since.items()
                if k in FOLLOW_ALARMS and now - since > TIMEOUT}
        for alarm in set(FOLLOW_ALARMS.values()):
            self._alarm(alarm, alarm in late)

    def _level(self, alarm: str, active: bool) -> None:
        self._alarm(alarm, active)


class Side:
    """One reconciler with its own fakes; the alarm sink keeps levels, as the supervisor's
    does (it acts only on a change of level), and counts what it was told."""

    def __init__(self, cls: type[Reconciler]) -> None:
        self.env: Envelope = ENVELOPES[0]
        self.machine = recording_machine(LINE)
        self.telemetry = Telemetry()
        self.act = Actuators(self.machine, lambda: self.env)
        self.levels: dict[str, bool] = {}
        self.told = 0
        self.raised: set[str] = set()
        self.tasks: list[asyncio.Task[None]] = []
        self.rec = cls(self.act, self.telemetry, LINE, spawn=self._spawn, alarm=self._alarm)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(work, name=name))

    def _alarm(self, alarm: str, active: bool) -> None:
        self.told += 1
        self.levels[alarm] = active
        if active:
            self.raised.add(alarm)

    def cycle(self, now: float) -> None:
        self.rec.cycle(self.env, now)

    async def settle(self) -> None:
        await asyncio.gather(*self.tasks)
        self.tasks.clear()

    def trace(self, since: int) -> dict[str, Any]:
        return {"writes": [(c.name, c.args, c.kwargs) for c in self.machine.log[since:]],
                "levels": dict(sorted(self.levels.items())),
                "escalated": sorted(self.rec.escalated),
                "outside": dict(sorted(self.rec._outside_since.items())),
                "corrections": self.rec.corrections, "stop_heartbeat": self.rec.stop_heartbeat}


def _script(rng: random.Random, steps: int) -> list[dict[str, Any]]:
    """The inputs of every cycle, drawn before either side runs (so both see the same)."""
    script: list[dict[str, Any]] = []
    now = 0.0
    for _ in range(steps):
        step: dict[str, Any] = {}
        if rng.random() < 0.05:
            step["env"] = rng.choice(ENVELOPES)
        if rng.random() < 0.1:
            step["rf_cmd"] = (rng.random() < 0.5, rng.choice((0.0, 10.0, 40.0, 79.0, 120.0)))
        if rng.random() < 0.1:
            step["outputs"] = SafetyOutputs(*(rng.random() < 0.5 for _ in range(9)))
        if rng.random() < 0.1:
            step["flow"] = (rng.choice(GASES), rng.choice((0.0, 1.0, 4.0, 9.0, 60.0, 250.0)))
        if rng.random() < 0.1:
            step["axis_cmd"] = (rng.choice(LINEAR_AXES), rng.choice((0.0, 200.0, 5000.0)))
        if rng.random() < 0.05:
            step["spindle_cmd"] = rng.choice((0.0, 10.0, 30.0, 150.0))
        if rng.random() < 0.05:
            step["disabled"] = rng.choice(LINEAR_AXES)
        if rng.random() < 0.3:
            forward = rng.choice((0.0, 5.0, 40.0, 80.0, 95.0))
            on = rng.random() < 0.6
            step["rf"] = RfStatus(forward, 0.1, forward, True, on, on, False, False, 0, False)
        if rng.random() < 0.5:
            # Above the envelope's limit by this much: inside, within and past the tolerance
            # (2 % of full scale + 0.05: 0.15 to 4.05 slpm on this line).
            step["mfc"] = (rng.choice(GASES), rng.choice((-5.0, 0.0, 0.1, 0.2, 0.5, 1.0, 1.5,
                                                         3.0, 5.0, 60.0)))
        if rng.random() < 0.4:
            speed = rng.choice((0.0, 2.0, 20.0, 104.0, 400.0, 700.0, 3500.0))
            step["axis"] = (rng.choice(AXES), AxisStatus(
                enabled=True, moving=rng.random() < 0.7, in_position=False, homed=True,
                limit_positive=False, limit_negative=False, alarm=False, alarm_code=0,
                position_mm=100.0, velocity=rng.choice((1, -1)) * speed, mode=AxisMode.JOG))
        if rng.random() < 0.3:
            step["effective"] = SafetyOutputs(*(rng.random() < 0.5 for _ in range(9)))
        if rng.random() < 0.05:
            step["link"] = (rng.choice(LINKED), rng.random() < 0.8)
        now += rng.choice((0.01, 0.01, 0.01, 0.05, 0.2, TIMEOUT * 0.6, TIMEOUT * 1.1))
        step["now"] = now
        step["settle"] = rng.random() < 0.8
        script.append(step)
    return script


def _apply(side: Side, step: dict[str, Any]) -> None:
    commanded, telemetry = side.act.commanded, side.telemetry
    if "env" in step:
        side.env = step["env"]
    if "rf_cmd" in step:
        commanded.rf_on, commanded.power_kw = step["rf_cmd"]
    if "outputs" in step:
        commanded.outputs = step["outputs"]
    if "flow" in step:
        commanded.flows_slpm[step["flow"][0]] = step["flow"][1]
    if "axis_cmd" in step:
        commanded.axis_speeds[step["axis_cmd"][0]] = step["axis_cmd"][1]
    if "spindle_cmd" in step:
        commanded.spindle_rpm = step["spindle_cmd"]
    if "disabled" in step:
        commanded.disabled_axes ^= {step["disabled"]}
    if "rf" in step:
        telemetry.rf = step["rf"]
    if "mfc" in step:
        name, above = step["mfc"]
        mass = max(0.0, side.env.flow_max_slpm.get(name, 0.0) + above)
        telemetry.mfcs[name] = MfcReading(14.7, 25.0, mass, mass, mass, "O2", frozenset())
    if "axis" in step:
        telemetry.axes[step["axis"][0]] = step["axis"][1]
    if "effective" in step:
        telemetry.safety = healthy_inputs(outputs_effective=step["effective"])
    if "link" in step:
        health = telemetry.link(step["link"][0])
        health.ever_ok = True
        health.last_ok_wall = 10**9 if step["link"][1] else 0.0  # fresh for the test, or lost


@pytest.mark.parametrize("seed", range(12))
async def test_the_shortcuts_do_what_the_full_path_does(seed: int) -> None:
    script = _script(random.Random(seed), 400)
    fast, full = Side(Reconciler), Side(FullPath)
    for side in (fast, full):
        for device in LINKED:  # every link up at first
            _apply(side, {"link": (device, True)})
    for number, step in enumerate(script):
        logged = {side: len(side.machine.log) for side in (fast, full)}
        for side in (fast, full):
            _apply(side, step)
            side.cycle(step["now"])
        if step["settle"]:  # else the corrections stay in flight into the next cycle
            await asyncio.gather(fast.settle(), full.settle())
        assert fast.trace(logged[fast]) == full.trace(logged[full]), \
            f"seed {seed}, cycle {number}"
    # The sequence reached what the shortcuts stand in for, and they saved calls.
    assert fast.machine.writes(), "corrections were written"
    assert fast.raised & set(FOLLOW_ALARMS.values()), "a follow alarm was raised"
    assert fast.told < full.told


async def test_a_level_is_told_once_until_it_changes() -> None:
    side = Side(Reconciler)
    side.rec.cycle(side.env, 0.0)
    first = side.told
    assert set(side.levels) == {*FOLLOW_ALARMS.values(), "cooling_rotation_needed"}
    side.rec.cycle(side.env, 0.01)
    assert side.told == first  # nothing changed: nothing told
    side.act.commanded.outputs = SafetyOutputs(gas_master_valve=True, exhaust_fan=True)
    side.telemetry.mfcs["mfc_o2"] = MfcReading(14.7, 25.0, 500.0, 500.0, 500.0, "O2",
                                               frozenset())
    side.rec.cycle(side.env, 1.0)
    side.rec.cycle(side.env, 2.0 + TIMEOUT)  # the O2 has not followed: the alarm, once
    assert side.levels["follow_gas"] is True and side.told == first + 1
    for task in side.tasks:
        task.cancel()
    await asyncio.gather(*side.tasks, return_exceptions=True)
