"""The executor's sequencing, through its public interface, with typed fakes behind the real
single writer and a telemetry a small plant feeds as the writes go out.

Pinned here: ignition and its retries, make-before-break gas switching, precursors only once
the power holds, a stop seen at the next wait, a ramp to 0 kW, the resume prelude, cool-down.
Not pinned: the closed loop of the passes (being rewritten for issue 9)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from controller.config.line import cooling_speed_rpm
from controller.machine.telemetry import Telemetry
from controller.recipes.plan import (
    CooldownOp,
    DepositOp,
    DwellOp,
    IgniteOp,
    LayerOp,
    Op,
    Plan,
    PurgeOp,
    RampOp,
)
from controller.run.executor import POLL_S, Cursor, Executor, IgnitionFailed, StepFailed
from controller.run.process_clock import ProcessClock
from controller.safety.envelope import Envelope, EnvelopeInputs, compute
from controller.safety.states import State
from controller.safety.writer import Actuators
from drivers.codecs.servo_map import AxisMode
from drivers.mfc import MfcReading
from drivers.rf_generator import RfStatus
from drivers.servo_axis import AxisStatus
from tests.fakes import Call, default_line, healthy_inputs, recording_machine
from tests.waiting import eventually

LINE = default_line()
ROD_STOP_C = LINE.safety_io().rod_rotation_stop_c
PURGE_WAIT_S = LINE.supervision.purge_before_reignite_s

PURGE = PurgeOp(duration_s=30, ar_slpm=10, o2_slpm=0, n2_slpm=30, spindle_rpm=10)
IGNITE = IgniteOp(ar_slpm=30, o2_slpm=0, n2_slpm=30, power_kw=12, spindle_rpm=30,
                  timeout_s=60, attempts=3, ramp_kw_s=5)
TO_OXYGEN = RampOp(duration_s=5, power_kw=50, ar_slpm=0, o2_slpm=80, n2_slpm=30,
                   spindle_rpm=None)
TO_ZERO = RampOp(duration_s=5, power_kw=0, ar_slpm=10, o2_slpm=0, n2_slpm=30,
                 spindle_rpm=None)
DWELL = DwellOp(duration_s=10)
COOL = CooldownOp(power_ramp_down_s=10, duration_s=60, ar_slpm=0, o2_slpm=0, n2_slpm=30,
                  spindle_rpm=cooling_speed_rpm(LINE))
LAYER = LayerOp(name="undoped", passes=1, power_kw=50, ar_slpm=0, o2_slpm=80, n2_slpm=30,
                sicl4_g_min=20, dopant_slpm=0.3, traverse_mm_min=150, spindle_rpm=30,
                heaters=False, coil_gap_mm=30, power_trim_kw=(-5, 5),
                sicl4_slpm=LINE.mfc("mfc_sicl4").slpm_for(20),  # as planning makes it
                target_diameter_mm=31.0)
DEPOSIT = DepositOp(layers=(LAYER,), turning_point_a_mm=300, turning_point_b_mm=900)


def plan(*steps: Op, lit: tuple[bool, ...], lit_by: tuple[int | None, ...]) -> Plan:
    return Plan("unit", 1, steps, lit_before=lit, lit_by=lit_by)


class FakeClock(ProcessClock):
    """Process time only the test moves: a sleep is recorded in the machine's log and returns
    at once; a wait on the wire gets ``wall_budget_s`` of wall time."""

    def __init__(self, log: list[Call], wall_budget_s: float) -> None:
        super().__init__(1.0)
        self.log = log
        self.t = 0.0
        self.wall_budget_s = wall_budget_s

    def now(self) -> float:
        return self.t

    async def sleep(self, process_s: float) -> None:
        self.log.append(Call("clock", "sleep", (process_s,), {}))
        self.t += max(0.0, process_s)
        await asyncio.sleep(0)

    def wall_budget(self, process_s: float) -> float:
        return self.wall_budget_s


class Plant:
    """A perfect line: each write shows in the telemetry at once, unless the test says
    otherwise (the plasma does not light; the power does not follow its setpoint)."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self.lights: Callable[[int], bool] = lambda attempt: True
        self.follow_power = True
        self.ignitions = 0
        self._on = self._lit = False
        self._setpoint = self._forward = 0.0

    def __call__(self, call: Call) -> None:
        if call.name == "rf.set_power_kw":
            self._setpoint = call.args[0]
            if self.follow_power:
                self._forward = self._setpoint
        elif call.name == "rf.rf_on":
            self.ignitions += 1
            self._on, self._lit = True, self.lights(self.ignitions)
        elif call.name == "rf.rf_off":
            self._on = self._lit = False
        elif call.method == "set_flow_slpm":
            flow = call.args[0]
            self.telemetry.mfcs[call.device] = MfcReading(14.7, 25.0, flow, flow, flow, "N2",
                                                          frozenset())
        elif call.method == "move_absolute":
            self.telemetry.axes[call.device] = AxisStatus(
                True, False, True, True, False, False, False, 0, call.args[0], 0.0,
                AxisMode.POSITION_ABSOLUTE)
        self._show_rf()

    def hold_power(self, kw: float) -> None:
        self._forward = kw
        self._show_rf()

    def _show_rf(self) -> None:
        forward = self._forward if self._on else 0.0
        self.telemetry.rf = RfStatus(forward, 0.0, self._setpoint, True, self._on, self._lit,
                                     False, False, 0, False)


class Rig:
    """The executor over typed fakes behind the real writer, whose envelope follows the
    telemetry. ``wall_budget_s``: how long a wait on the wire may take before its step fails;
    short where the test wants the failure, long (never reached) where it stops the wait."""

    def __init__(self, the_plan: Plan, *, cursor: Cursor | None = None,
                 wall_budget_s: float = 60.0, rod_c: float = 25.0) -> None:
        self.state = State.EXECUTE
        self.machine = recording_machine(LINE)
        self.telemetry = Telemetry()
        self.plant = Plant(self.telemetry)
        self.machine.on_call(self.plant)
        self.clock = FakeClock(self.machine.log, wall_budget_s)
        self.act = Actuators(self.machine, self.envelope)
        self.executor = Executor(the_plan, LINE, self.act, self.telemetry, self.clock,
                                 cursor=cursor)
        self.rod(rod_c)

    def envelope(self) -> Envelope:
        io = self.telemetry.safety
        return compute(EnvelopeInputs(
            state=self.state, plasma_lit=self.executor.plasma_lit,
            rod_temperature_c=None if io is None else io.rod_temperature_c), LINE)

    def writes(self, *names: str) -> list[Call]:
        return [c for c in self.machine.log if c.name in names]

    def flows(self, device: str) -> list[float]:
        return [c.args[0] for c in self.machine.calls(f"{device}.set_flow_slpm")]

    def rod(self, celsius: float) -> None:
        self.telemetry.safety = healthy_inputs(rod_temperature_c=celsius)


rig = Rig


async def settle(polls: int = 5) -> None:
    """Give a waiting executor a few of its polls (it must still be waiting afterwards)."""
    for _ in range(polls):
        await asyncio.sleep(POLL_S)


# -- ignition -----------------------------------------------------------------------------
IGNITION = plan(IGNITE, lit=(False,), lit_by=(None,))


async def test_ignition_lights_in_argon_at_its_power_and_then_expects_the_plasma() -> None:
    r = rig(IGNITION)
    assert not r.executor.plasma_expected
    await r.executor.run()
    assert r.executor.plasma_expected
    order = [c.name for c in r.writes("mfc_ar.set_flow_slpm", "rf.set_power_kw", "rf.rf_on")]
    assert order == ["mfc_ar.set_flow_slpm", "rf.set_power_kw", "rf.rf_on"]
    assert r.flows("mfc_ar") == [IGNITE.ar_slpm]
    assert r.machine.calls("rf.set_power_kw")[0].args[0] == IGNITE.power_kw
    assert r.act.commanded.outputs.rf_permit and r.act.commanded.outputs.gas_master_valve


async def test_each_failed_ignition_turns_the_rf_off_and_purges_before_the_next() -> None:
    r = rig(IGNITION, wall_budget_s=0.0)
    r.plant.lights = lambda attempt: False
    with pytest.raises(IgnitionFailed, match="3 attempt"):
        await r.executor.run()
    sequence = [(c.name, c.args) for c in r.writes("rf.rf_on", "rf.rf_off", "clock.sleep")]
    assert sequence == [("rf.rf_on", ()), ("rf.rf_off", ()), ("clock.sleep", (PURGE_WAIT_S,))] \
        * IGNITE.attempts
    assert r.flows("mfc_ar") == [IGNITE.ar_slpm] * IGNITE.attempts  # argon again each time
    assert not r.executor.plasma_expected


async def test_an_ignition_that_lights_on_a_later_attempt_goes_on() -> None:
    r = rig(IGNITION, wall_budget_s=0.0)
    r.plant.lights = lambda attempt: attempt == 2
    await r.executor.run()
    assert len(r.machine.calls("rf.rf_on")) == 2
    assert len(r.machine.calls("rf.rf_off")) == 1
    assert r.executor.plasma_expected


async def test_a_released_executor_reignites_with_the_attempts_it_was_given() -> None:
    r = rig(IGNITION, wall_budget_s=0.0)
    r.plant.lights = lambda attempt: False
    r.executor.release(reignite_attempts=1)
    with pytest.raises(IgnitionFailed, match="1 attempt"):
        await r.executor.run()
    assert len(r.machine.calls("rf.rf_on")) == 1


# -- gases ----------------------------------------------------------------------------------
async def test_gases_switch_make_before_break() -> None:
    """Argon to oxygen: the oxygen rises before the argon falls, at every increment."""
    r = rig(plan(IGNITE, TO_OXYGEN, lit=(False, True), lit_by=(None, 0)))
    await r.executor.run()
    ramp = r.machine.log[r.machine.log.index(r.machine.calls("rf.set_ramp_kw_s")[-1]):]
    switch = [c.device for c in ramp if c.device in ("mfc_ar", "mfc_o2")]
    assert switch, "the ramp wrote no gases"
    assert switch == ["mfc_o2", "mfc_ar"] * (len(switch) // 2)
    assert r.flows("mfc_o2")[-1] == TO_OXYGEN.o2_slpm and r.flows("mfc_ar")[-1] == 0.0


async def test_a_falling_flow_waits_for_the_rising_one_to_be_written() -> None:
    r = rig(plan(IGNITE, TO_OXYGEN, lit=(False, True), lit_by=(None, 0)))
    answer = asyncio.Event()
    o2 = r.machine.mfcs["mfc_o2"]

    def slow_oxygen(call: Call) -> None:  # the oxygen's controller is slow to take its flow
        if call.device == "mfc_o2" and call.args[0] > 0:
            o2.stall = answer

    r.machine.on_call(slow_oxygen)
    task = asyncio.create_task(r.executor.run())

    async def o2_asked() -> bool:
        return bool(r.flows("mfc_o2")) and r.flows("mfc_o2")[-1] > 0

    await eventually(o2_asked, what="the oxygen write")
    await settle()
    assert r.flows("mfc_ar")[-1] == IGNITE.ar_slpm, "argon cut before the oxygen was set"
    answer.set()
    await task
    assert r.flows("mfc_ar")[-1] == TO_OXYGEN.ar_slpm


# -- precursors -----------------------------------------------------------------------------
def _precursor_writes(r: Rig) -> list[Call]:
    return [c for c in r.machine.log
            if (c.device in ("mfc_sicl4", "mfc_dopant") and c.method == "set_flow_slpm"
                and c.args[0] > 0)
            or (c.name == "safety_io.write_outputs" and c.args[0].precursor_valve)]


async def test_precursors_flow_only_once_the_layers_power_holds() -> None:
    r = rig(plan(IGNITE, DEPOSIT, lit=(False, True), lit_by=(None, 0)))
    r.plant.follow_power = False  # the generator has not reached its setpoint yet
    r.machine.on_call(lambda call: r.executor.stop() if call.device == "mfc_dopant" else None)
    task = asyncio.create_task(r.executor.run())

    async def layer_power_asked() -> bool:
        return any(c.args[0] == LAYER.power_kw for c in r.machine.calls("rf.set_power_kw"))

    await eventually(layer_power_asked, what="the layer's power setpoint")
    await settle()
    assert _precursor_writes(r) == [], "precursors before the power holds"
    r.plant.hold_power(LAYER.power_kw)
    with pytest.raises(asyncio.CancelledError):
        await task  # stopped at the dopant write, before any pass
    names = [c.name for c in _precursor_writes(r)]
    assert names == ["safety_io.write_outputs", "mfc_sicl4.set_flow_slpm",
                     "mfc_dopant.set_flow_slpm"]


async def test_an_operators_power_trim_is_written_with_the_layer_within_its_bounds() -> None:
    r = rig(plan(IGNITE, DEPOSIT, lit=(False, True), lit_by=(None, 0)))
    r.executor.set_trim(power_kw=3.0)
    assert r.executor.layer_power(LAYER) == LAYER.power_kw + 3.0
    r.executor.set_trim(power_kw=9.0)
    assert r.executor.layer_power(LAYER) == LAYER.power_kw + LAYER.power_trim_kw[1]
    r.machine.on_call(lambda call: r.executor.stop() if call.device == "mfc_dopant" else None)
    with pytest.raises(asyncio.CancelledError):
        await r.executor.run()
    assert r.machine.calls("rf.set_power_kw")[-1].args[0] == LAYER.power_kw + 5.0


# -- stop -----------------------------------------------------------------------------------
async def test_a_stop_is_seen_at_the_next_wait_and_nothing_more_is_written() -> None:
    r = rig(IGNITION)
    r.plant.lights = lambda attempt: False  # the executor waits for the plasma
    task = asyncio.create_task(r.executor.run())

    async def rf_on_sent() -> bool:
        return bool(r.machine.calls("rf.rf_on"))

    await eventually(rf_on_sent, what="the RF on")
    await settle()
    assert not task.done() and not r.executor.plasma_expected  # unlit while igniting
    written = len(r.machine.log)
    r.executor.stop()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert r.machine.log[written:] == []  # the reaction is the supervisor's, not its own


async def test_a_stopped_executor_does_nothing_until_released() -> None:
    r = rig(IGNITION)
    r.executor.stop()
    with pytest.raises(asyncio.CancelledError):
        await r.executor.run()
    assert r.machine.log == []
    r.executor.release()
    await r.executor.run()
    assert r.executor.plasma_expected


# -- ramps ----------------------------------------------------------------------------------
async def test_a_ramp_to_zero_turns_the_rf_off_and_expects_no_plasma() -> None:
    r = rig(plan(IGNITE, TO_ZERO, lit=(False, True), lit_by=(None, 0)))
    await r.executor.run()
    assert not r.executor.plasma_expected
    assert not r.act.commanded.rf_on
    rf = [c for c in r.machine.log if c.device == "rf"]
    assert rf[-1].name == "rf.rf_off"
    assert r.machine.calls("rf.set_power_kw")[-1].args[0] == 0.0


async def test_a_ramp_lasts_its_duration_however_long_its_writes_take() -> None:
    """Each increment at its time from the ramp's start: writes that take process time (a
    paced bus, a scaled run) shorten the sleep after them instead of stretching the ramp."""
    slow = RampOp(duration_s=20, power_kw=50, ar_slpm=0, o2_slpm=80, n2_slpm=30,
                  spindle_rpm=None)
    r = rig(plan(IGNITE, slow, lit=(False, True), lit_by=(None, 0)))
    write_s = 0.7
    r.machine.on_call(lambda call: setattr(r.clock, "t", r.clock.t + write_s)
                      if call.method == "set_flow_slpm" else None)
    increments: list[float] = []
    r.machine.on_call(lambda call: increments.append(r.clock.t)
                      if call.name == "rf.set_power_kw" and call.args[0] > 12 else None)
    await r.executor.run()
    began = increments[0]
    slice_s = slow.duration_s / 4  # ceil(20 s / 5 s) increments
    assert increments == pytest.approx([began + k * slice_s for k in range(4)])
    ramp_sleeps = [c.args[0] for c in r.machine.calls("clock.sleep")][-4:]
    assert ramp_sleeps == pytest.approx([slice_s - 3 * write_s] * 4)  # three gases each


# -- resume ---------------------------------------------------------------------------------
# Purge, ignite, to oxygen, dwell, down to 0 kW, purge again: lit before steps 2, 3 and 4.
RUN = plan(PURGE, IGNITE, TO_OXYGEN, DWELL, TO_ZERO, PURGE,
           lit=(False, False, True, True, True, False),
           lit_by=(None, None, 1, 1, 1, None))
DWELL_STEP, LAST_PURGE_STEP = 3, 5


async def _resume(r: Rig) -> list[str]:
    resumed: list[str] = []
    r.executor.release()
    await r.executor.run(resume=True, on_resumed=lambda: resumed.append("resumed"))
    return resumed


async def test_resume_reignites_where_the_plan_needs_plasma_and_the_rf_is_off() -> None:
    r = rig(RUN, cursor=Cursor(step=DWELL_STEP))
    assert await _resume(r) == ["resumed"]
    assert r.plant.ignitions == 1
    assert r.flows("mfc_ar")[0] == IGNITE.ar_slpm  # lit again in argon, as its ignition says


async def test_resume_does_not_reignite_a_burning_plasma() -> None:
    r = rig(RUN, cursor=Cursor(step=DWELL_STEP))
    await r.act.set_outputs("test", gas_master_valve=True, exhaust_fan=True)
    await r.act.rf_on("test")  # burning, as the interrupted run left it
    r.machine.log.clear()
    assert await _resume(r) == ["resumed"]
    assert r.machine.calls("rf.rf_on") == []


async def test_resume_trusts_no_lit_reading_while_the_rf_is_commanded_off() -> None:
    r = rig(RUN, cursor=Cursor(step=DWELL_STEP))
    r.telemetry.rf = RfStatus(50.0, 0.0, 50.0, True, True, True, False, False, 0, False)
    assert not r.act.commanded.rf_on
    await _resume(r)
    assert r.plant.ignitions == 1


async def test_resume_where_the_plan_has_put_the_plasma_out_does_not_reignite() -> None:
    r = rig(RUN, cursor=Cursor(step=LAST_PURGE_STEP))
    await _resume(r)
    assert r.machine.calls("rf.rf_on") == []
    assert not r.executor.plasma_expected


async def test_resume_needing_plasma_without_an_ignition_step_fails_the_step() -> None:
    r = rig(plan(DWELL, lit=(True,), lit_by=(None,)))
    with pytest.raises(StepFailed, match="no ignition step"):
        await _resume(r)
    assert r.machine.log == []


# -- cool-down ------------------------------------------------------------------------------
async def test_cool_down_ramps_the_power_down_before_the_rf_goes_off() -> None:
    r = rig(IGNITION)
    await r.executor.run()
    r.machine.log.clear()
    await r.executor.cool_down(COOL)
    assert not r.executor.plasma_expected and not r.act.commanded.rf_on
    rf = [(c.method, c.args) for c in r.machine.log if c.device == "rf"]
    assert rf.index(("set_power_kw", (0.0,))) < rf.index(("rf_off", ()))
    precursors_off = [c for c in r.machine.log if c.device in ("mfc_sicl4", "mfc_dopant")]
    assert precursors_off and all(c.args[0] == 0.0 for c in precursors_off)
    assert r.machine.log.index(precursors_off[-1]) < r.machine.log.index(
        r.machine.calls("rf.rf_off")[0])


def _spindle_speeds(r: Rig) -> list[float]:
    return [c.args[0] for c in r.machine.calls("spindle.set_velocity")]


async def test_cool_down_keeps_the_rod_turning_until_it_is_below_the_stop_temperature(
) -> None:
    r = rig(IGNITION, rod_c=900.0)
    task = asyncio.create_task(r.executor.cool_down(COOL))

    async def cooling() -> bool:
        return bool(r.writes("clock.sleep"))

    await eventually(cooling, what="the cooling time to pass")
    await settle()
    assert not task.done()
    assert _spindle_speeds(r) == [COOL.spindle_rpm]
    r.rod(ROD_STOP_C - 50)
    await task
    assert _spindle_speeds(r) == [COOL.spindle_rpm, 0.0]
    last_n2 = r.machine.calls("mfc_n2.set_flow_slpm")[-1]
    assert last_n2.args[0] == 0.0  # gases off before the spindle stops
    assert r.machine.log.index(last_n2) < r.machine.log.index(
        r.machine.calls("spindle.set_velocity")[-1])


async def test_a_rod_still_hot_when_the_cool_down_gives_up_is_left_turning() -> None:
    r = rig(IGNITION, rod_c=900.0)
    task = asyncio.create_task(r.executor.cool_down(COOL))

    async def cooling() -> bool:
        return bool(r.writes("clock.sleep"))

    await eventually(cooling, what="the cooling time to pass")
    r.clock.t += LINE.supervision.cooldown_max_s + 1  # the longest cool-down has passed
    await task
    assert _spindle_speeds(r) == [COOL.spindle_rpm]
    assert r.flows("mfc_n2")[-1] == 0.0
