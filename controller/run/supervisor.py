"""The supervisor: owns the devices, the state machine, the interlocks and the run.

One asyncio TaskGroup holds a poller per device (safety I/O fastest, with the heartbeat and the
interlock evaluation after every read), the telemetry fan-out, the record writer, and the
running executor. Every command goes: state machine (allowed here? else the reason) -> audit
record (durable) -> action. Every trip goes: safe-state writes (RF first) -> record.

The parts live next door: ``polling`` (the pollers and link health), ``judgement`` (signals,
interlocks, deviation alarms, early warnings) and ``supervisor_reactions`` (trip, suspend,
hold, stop, abort). Here: the lifecycle, the commands, the run and its records."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import structlog

from controller.config.line import AXIS_NAMES, DEVICE_NAMES, cooling_speed_rpm
from controller.machine.devices import Machine
from controller.machine.polling import Pollers, poll_hz
from controller.machine.polling import link_alive as _link_alive
from controller.machine.polling import link_lost as _link_lost
from controller.machine.polling import wait_links as _wait_links
from controller.machine.telemetry import Fanout, Telemetry
from controller.recipes.plan import Plan
from controller.records.run_records import PassRecord, RecordsUnavailable, RunHeader, RunRecords
from controller.run.executor import Cursor, Executor, IgnitionFailed, PassSummary, StepFailed
from controller.run.maintenance import Maintenance
from controller.run.process_clock import ProcessClock
from controller.run.record_sink import RecordSink
from controller.run.rest_keeper import RestKeeper
from controller.run.supervisor_reactions import SupervisorReactions, cancel_and_wait
from controller.safety.alarm_catalog import alarm_definitions
from controller.safety.alarms import AlarmEvent, AlarmManager
from controller.safety.envelope import Envelope, EnvelopeInputs, compute
from controller.safety.interlocks import Reaction, Signals, blocking_start, evaluate
from controller.safety.judgement import GapTarget, Judge, build_signals
from controller.safety.reconciler import Reconciler
from controller.safety.states import ACTIVE_STATES, Command, State, StateMachine
from controller.safety.writer import Actuators, EnvelopeRefused
from drivers.codecs.servo_map import AlarmCode
from drivers.errors import DeviceError

log = structlog.get_logger(__name__)

# Commands that move the line towards its safe state: never refused for want of a record.
SAFE_WARD_COMMANDS = frozenset({"hold", "stop", "abort", "jog_stop", "cool_rotation"})
RECORD_TIMEOUT_S = 30.0

FINAL_STATES = frozenset({State.COMPLETE, State.STOPPED, State.ABORTED})
OUTCOME = {State.COMPLETE: "complete", State.STOPPED: "stopped", State.ABORTED: "aborted"}




class CoolingRotationRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CommandResult:
    command: str
    accepted: bool
    reason: str | None = None
    state: str | None = None


class Supervisor(SupervisorReactions):
    def __init__(
        self,
        machine: Machine,
        records: RunRecords,
        *,
        clock: ProcessClock | None = None,
        link_wait_s: float = 10.0,
    ) -> None:
        self.machine = machine
        self.line = machine.line
        self.records = records
        self.clock = clock or ProcessClock(machine.time_scale)
        self.link_wait_s = link_wait_s
        self.sm = StateMachine()
        self.telemetry = Telemetry()
        self.fanout = Fanout()
        self.alarms = AlarmManager(alarm_definitions(self.line))
        self.act = Actuators(machine, self.envelope_now, self._on_setpoint)
        self.act.add_refusal_listener(self._on_refusal)
        self.run_id: int | None = None
        self.plan: Plan | None = None
        self.executor: Executor | None = None
        self.outcome_reason: str | None = None
        self.finished = asyncio.Event()
        self.trip_cause: str | None = None
        self.heartbeat_enabled = True
        self.armed = False
        self._rf_off_wall = 0.0
        self._last_idle_posture = 0.0
        self.reaction_latency_s: list[float] = []
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._exec_task: asyncio.Task[None] | None = None
        self._acting_task: asyncio.Task[None] | None = None
        self._reaction: asyncio.Task[None] | None = None
        self.record_sink = RecordSink(timeout_s=RECORD_TIMEOUT_S,
                                      on_unavailable=self._records_unavailable)
        self._reignite_failed = False
        self._log = log.bind(line=self.line.line)
        self._judge = Judge(self.line, self.telemetry, self.alarms, self.act)
        self.reconciler = Reconciler(self.act, self.telemetry, self.line,
                                     spawn=self._spawn_owned, alarm=self._alarm_level)
        self._owned: set[asyncio.Task[None]] = set()
        self._pollers = Pollers(machine, self.telemetry,
                                heartbeat_enabled=self._may_beat,
                                judge=self._safety_cycle,
                                configure_axis=self._configure_axis_watchdog)
        self.maintenance = Maintenance(self, lease_s=self.line.supervision.jog_lease_s)
        self.rest = RestKeeper(self)
        self.sm.add_listener(self._on_transition)
        self.alarms.subscribe(self._on_alarm)

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        for device in DEVICE_NAMES:
            self.telemetry.link(device).timeout_s = self.line.devices[device].link_timeout_s
        spawn = self._tg.create_task
        self._tasks.append(spawn(self.record_sink.run(), name="records"))
        self._tasks.extend(self._pollers.spawn(spawn))
        self._tasks.append(spawn(self._telemetry_loop(), name="telemetry"))
        self._tasks.append(spawn(self.maintenance.watchdog(), name="jog-leases"))
        self._tasks.append(spawn(self.rest.watch(), name="rest-keeper"))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._cancel_executor()
        await self._cancel_acting()
        reaction = self._reaction
        if reaction is not None and not reaction.done():
            # A safety reaction finishes its writes (bounded by the transports' timeouts);
            # waiting for an operator or a recovery afterwards is not ours to do any more.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(reaction), timeout=5)
            reaction.cancel()
        with contextlib.suppress(Exception):
            await self.record_sink.drain(timeout_s=10)
        self._pollers.stopping = True
        await cancel_and_wait([*self._tasks, *self._owned])
        assert self._tg is not None
        await self._tg.__aexit__(None, None, None)
        await self.machine.close()

    # -- links and interlocks --------------------------------------------------------------
    def link_lost(self, device: str) -> bool:
        """A link that answered once and has since gone quiet (not one still coming up)."""
        return _link_lost(self.telemetry, device)

    def link_alive(self, device: str) -> bool:
        return _link_alive(self.telemetry, device)

    async def wait_links(self, timeout_s: float | None = None) -> list[str]:
        """Wait until every device has answered; returns those that never did."""
        return await _wait_links(
            self.telemetry, timeout_s if timeout_s is not None else self.link_wait_s)

    def signals(self) -> Signals:
        executor = self.executor
        expected = executor is not None and executor.plasma_expected and self.act.commanded.rf_on
        return build_signals(self.telemetry, self.line, plasma_expected=expected,
                             state=self.sm.state)

    # -- the envelope ----------------------------------------------------------------------
    def envelope_inputs(self) -> EnvelopeInputs:
        """Everything the envelope looks at, from the latest telemetry (rule 10)."""
        signals = self.signals()
        conditions = {i.id for i in evaluate(signals, self.line)}
        io = self.telemetry.safety if self.link_alive("safety_io") else None
        if io is not None and io.heartbeat_latched:
            conditions.add("heartbeat_latched")
        outputs = self.act.commanded.outputs
        effective = io.outputs_effective if io is not None else None
        return EnvelopeInputs(
            state=self.sm.state, mode=self.sm.mode, conditions=frozenset(conditions),
            plasma_lit=signals.plasma_lit,
            doors_closed=io.doors_closed if io is not None else signals.doors_closed,
            rod_temperature_c=io.rod_temperature_c if io is not None else None,
            devices_under_test=frozenset(self.maintenance.test_leases),
            master_valve_open=outputs.gas_master_valve
            or bool(effective is not None and effective.gas_master_valve),
        )

    def envelope_now(self) -> Envelope:
        return compute(self.envelope_inputs(), self.line)

    def _may_beat(self) -> bool:
        return self.heartbeat_enabled and not self.reconciler.stop_heartbeat

    def _spawn_owned(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._owned.add(task)
        task.add_done_callback(self._owned.discard)

    def _alarm_level(self, alarm_id: str, active: bool) -> None:
        if active != self.alarms.status(alarm_id).condition:
            self.alarms.evaluate(alarm_id, active, time.time(), machine_state=self.sm.state.value)

    def _on_refusal(self, refusal: EnvelopeRefused, source: str) -> None:
        run_id = self.run_id
        self._record(lambda: self.records.record_event(run_id, "envelope_refused", {
            "device": refusal.device, "quantity": refusal.quantity,
            "value": refusal.value, "reason": refusal.reason, "source": source}))

    async def _configure_axis_watchdog(self, axis: str) -> None:
        """The drive's own communication watchdog (rule 11), set at connect: a named exception
        to the single writer, like the heartbeat."""
        cfg = self.line.axis(axis)
        fallback = cooling_speed_rpm(self.line) if cfg.motion == "rotary" else 0.0
        await self.machine.axes[axis].configure_comm_watchdog(cfg.comm_watchdog_s, fallback)

    def start_blockers(self) -> list[str]:
        """Why a run cannot start now (empty when it can)."""
        reasons = [f"{d}: no link" for d in DEVICE_NAMES if not self.link_alive(d)]
        reasons += [f"interlock {i.id}: {i.description}"
                    for i in blocking_start(self.signals(), self.line)]
        return reasons

    async def make_idle(self, source: str = "idle") -> None:
        """The idle posture: exhaust running (the draft interlock needs it), valves closed,
        heaters off, RF off."""
        await self.act.rf_off(source)
        await self.act.set_outputs(source, exhaust_fan=True, gas_master_valve=False,
                                   precursor_valve=False, heater_a=False, heater_b=False,
                                   rf_permit=False, beacon_green=False, beacon_amber=True)

    async def reset_controller_loss(self, user: str) -> list[str]:
        """After a controller died, the hardware latched what it did alone: the PLC's
        heartbeat loss, each drive's communication-watchdog alarm. Restarting needs a
        recorded command (rule 11): the operator's ``povd run`` / ``povd serve`` is it, and
        the resets are recorded before they are written. Returns what was reset."""
        io = self.telemetry.safety
        axes = [name for name, status in self.telemetry.axes.items()
                if status.alarm and status.alarm_code == AlarmCode.COMM_WATCHDOG]
        latched = io is not None and io.heartbeat_latched
        if not axes and not latched:
            return []
        what = [*axes, *(["heartbeat_latch"] if latched else [])]
        await self.record_command(user, "reset_after_controller_loss", {"reset": what},
                                  accepted=True, reason=None)
        source = f"restart:{user}"
        resets = [self.act.reset_axis_alarm(axis, source) for axis in axes]
        if latched:
            resets.append(self.act.reset_heartbeat_latch(source))
        await asyncio.gather(*resets, return_exceptions=True)
        await asyncio.sleep(3 / poll_hz(self.line, "carriage"))  # fresh readings
        return what

    async def restart_cooling_rotation(self, user: str) -> float:
        """Turn a hot rod at its cooling speed again, by command (after an E-stop reset the
        drives have power again but nothing restarts by itself); CoolingRotationRefused with
        the reason when there is nothing to do or it cannot be done now."""
        env = self.envelope_now()
        if not env.rod_hot:
            raise CoolingRotationRefused("the rod has cooled: no cooling rotation is needed")
        if env.spindle_min_rpm <= 0:
            raise CoolingRotationRefused(
                "the spindle cannot turn now: " + env.reasons.get("spindle", "no power"))
        source = f"cool_rotation:{user}"
        await self.act.enable_axis("spindle", source)
        await self.act.spindle_rpm(env.spindle_min_rpm, source)
        return env.spindle_min_rpm

    async def wait_healthy(self, timeout_s: float = 5.0) -> list[str]:
        """Wait for the start blockers to go (e.g. the exhaust draft coming up)."""
        deadline = time.monotonic() + timeout_s
        while (blockers := self.start_blockers()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.arm()
        return blockers

    def arm(self) -> None:
        """Start annunciating interlock alarms: after the idle posture has been written, so the
        conditions of a machine still coming up (exhaust fan spinning up) are not alarms."""
        self.armed = True

    def _safety_cycle(self) -> None:
        """After every safety I/O read: judge (and start a trip's reaction), then compute the
        envelope and reconcile every output into it. Never awaits a device."""
        self._judge_interlocks()
        self.reconciler.cycle(self.envelope_now())

    def _gap_target(self) -> GapTarget | None:
        executor = self.executor
        layer = executor.current_layer() if executor is not None else None
        if executor is None or layer is None or executor.cursor.diameter_mm is None:
            return None
        return GapTarget(layer.coil_gap_mm, executor.cursor.diameter_mm)

    def _judge_interlocks(self) -> None:
        """Annunciate, then start the worst tripped interlock's reaction."""
        if not self.armed:
            return
        started = time.monotonic()
        now = time.time()
        tripped = self._judge.judge(self.signals(), self.sm.state, self._gap_target(), now)
        if not tripped:
            return
        worst = tripped[0]
        if worst.reaction in (Reaction.ESTOP, Reaction.TRIP, Reaction.TRIP_GAS):
            self._begin_trip(worst, started)
        elif worst.reaction is Reaction.SUSPEND and self.sm.state in (
            State.EXECUTE, State.UNSUSPENDING
        ) and self._exec_task is not None:
            self._begin_suspend(worst)

    # -- the run ---------------------------------------------------------------------------
    async def _start(self, plan: Plan, header: RunHeader, cursor: Cursor | None,
                     run_id: int | None) -> None:
        self.plan = plan
        # Trip alarms latched while idle whose condition has gone (the exhaust before the fan
        # ran, say) are cleared by the start itself, which is recorded.
        self.alarms.clear_latches(header.operator, time.time())
        self.finished.clear()
        self._reignite_failed = False
        self.trip_cause = None
        if run_id is None:
            self.run_id = await self.records.start_run(header)
            await self.records.record_command(self.run_id, header.operator, "start",
                                              {"recipe": plan.name}, accepted=True)
        else:
            self.run_id = run_id
            await self.records.record_event(
                run_id, "run_resumed", {"cursor": cursor.to_json() if cursor else None})
        self.executor = Executor(plan, self.line, self.act, self.telemetry, self.clock,
                                 cursor=cursor, on_pass=self._on_pass,
                                 on_progress=self._on_progress)
        self.sm.apply(Command.START, cause=f"run {self.run_id}")
        try:
            await self.act.set_outputs("start", exhaust_fan=True, gas_master_valve=True,
                                       precursor_valve=False, beacon_green=True)
            for axis in AXIS_NAMES:
                await self.act.enable_axis(axis, "start")
            await self._home_if_needed()
        except (StepFailed, DeviceError, EnvelopeRefused) as exc:
            # A start that cannot finish ends like any failure in a run: safe state, Aborted,
            # recorded; never a unit left in Starting with the master valve open.
            if self.sm.state is State.STARTING:
                await self._abort_with("step_failed", f"start failed: {exc}")
            return
        if self.sm.state is not State.STARTING:
            return  # an abort, a stop or a trip cut in while the axes homed: nothing to run
        self._launch_executor(resume=cursor is not None)
        if cursor is None:
            self.sm.complete(cause="machine ready")

    async def _home_if_needed(self) -> None:
        for axis in ("carriage", "torch_slide"):
            status = self.telemetry.axes.get(axis)
            if status is not None and status.homed:
                continue
            await self.act.home_axis(axis, "start")
            deadline = time.monotonic() + self._homing_budget_s(axis)
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                if self.sm.state is not State.STARTING:
                    return
                status = self.telemetry.axes.get(axis)
                if status is not None and status.homed and not status.moving:
                    break
            else:
                raise StepFailed("start", f"{axis} did not home")

    def _homing_budget_s(self, axis: str) -> float:
        """Wall time for homing from the far end at setup speed (the drive's homing speed),
        with margin."""
        cfg = self.line.axis(axis)
        setup = cfg.setup_speed
        travel = cfg.max_position_mm - cfg.min_position_mm
        return self.clock.wall_budget(travel / setup * 60 * 1.5) + 10.0

    def _launch_executor(self, *, resume: bool) -> None:
        assert self.executor is not None
        assert self._tg is not None
        self.executor.release()
        self._exec_task = self._tg.create_task(self._run_executor(resume), name="executor")

    async def _run_executor(self, resume: bool) -> None:
        executor = self.executor
        assert executor is not None
        try:
            await executor.run(resume=resume, on_resumed=self._resumed)
        except asyncio.CancelledError:
            raise
        except IgnitionFailed as exc:
            self._exec_task = None
            await self._ignition_failed(exc)
            return
        except StepFailed as exc:
            self._exec_task = None
            await self._abort_with("step_failed", str(exc))
            return
        except EnvelopeRefused as exc:
            # The envelope forbade a step's write: a condition the judge is reacting to, or
            # one it is not (then the run cannot go on as planned).
            self._exec_task = None
            if self._reaction is None or self._reaction.done():
                await self._abort_with("step_failed", f"refused by the safety envelope: {exc}")
            return
        except RecordsUnavailable as exc:
            self._exec_task = None
            await self._records_failed(exc)
            return
        except DeviceError as exc:
            self._exec_task = None
            await self._device_failed(exc)
            return
        except Exception as exc:  # rule 1: an unhandled error ends in the safe state
            self._exec_task = None
            self._log.exception("executor.crashed")
            await self._abort_with("internal_error", repr(exc))
            return
        if self.sm.state is State.EXECUTE:
            # Still the executor's task: a trip during the cool-down cancels it.
            self.sm.complete(cause="recipe finished")
            await self._cool_down_if_hot("completing")
            if self._now_in(State.COMPLETING):
                self.sm.complete(cause="run complete")
        self._exec_task = None

    def _resumed(self) -> None:
        if self.sm.state in (State.UNHOLDING, State.UNSUSPENDING, State.STARTING):
            self.sm.complete(cause="process re-established")

    async def _cool_down_if_hot(self, source: str) -> None:
        executor = self.executor
        if executor is None:
            return
        io = self.telemetry.safety
        hot = io is None or io.rod_temperature_c > self.line.safety_io().rod_rotation_stop_c
        if self.act.commanded.rf_on or hot:
            await executor.cool_down(self._cooldown_op())
        self._log.info("supervisor.cooled", source=source)

    # -- commands --------------------------------------------------------------------------
    async def command(self, command: str, user: str, *, reason: str | None = None,
                      plan: Plan | None = None, header: RunHeader | None = None,
                      cursor: Cursor | None = None, run_id: int | None = None) -> CommandResult:
        """An operator command: checked, recorded durably, then carried out."""
        refusal = self._refusal(command, plan)
        if refusal is None and command == "clear":
            # Clearing resets the devices' own latches (RF fault, drive alarms) first, so the
            # check of the trip conditions sees the truth; the reset itself is recorded first.
            refusal = await self._clear_latches_then_check(user)
        accepted = refusal is None
        current_run = self.run_id
        if not (accepted and command == "start"):  # an accepted start is recorded in its run
            try:
                await self._record_now(lambda: self.records.record_command(
                    current_run, user, command, {"reason": reason}, accepted=accepted,
                    reason=refusal))
            except RecordsUnavailable as exc:
                # Rule 9: no glass made that cannot be accounted for; moving towards the safe
                # state (hold, stop, abort) never waits on a disk.
                self._log.error("command.not_recorded", command=command, error=str(exc))
                if accepted and command not in SAFE_WARD_COMMANDS:
                    refusal = f"run records unavailable, not carried out: {exc.detail}"
                    accepted = False
        if refusal is not None:
            self._log.warning("command.refused", command=command, user=user, reason=refusal)
            return CommandResult(command, False, refusal, self.sm.state.value)
        self._log.info("command.accepted", command=command, user=user)
        if command == "start":
            assert plan is not None
            assert header is not None
            await self._start(plan, header, cursor, run_id)
        else:
            await self._carry_out(command, user)
        await self._record_flush()
        return CommandResult(command, True, None, self.sm.state.value)

    async def _carry_out(self, command: str, user: str) -> None:
        """An accepted command other than start."""
        if command == "hold":
            await self._hold(cause=f"operator {user}")
        elif command == "unhold":
            self.sm.apply(Command.UNHOLD, cause=f"operator {user}")
            self._reignite_failed = False
            self.alarms.evaluate("reignite_failed", False, time.time())
            self._launch_executor(resume=True)
        elif command == "stop":
            await self._stop(cause=f"operator {user}")
        elif command == "abort":
            await self._operator_abort(user)
        elif command == "clear":
            self.sm.apply(Command.CLEAR, cause=f"operator {user}")
            self.alarms.clear_latches(user, time.time())
            self.trip_cause = None
            self.heartbeat_enabled = True
            self.sm.complete(cause="latches cleared")
        elif command == "reset":
            self.sm.apply(Command.RESET, cause=f"operator {user}")
            self.sm.complete(cause="reset")

    async def _clear_latches_then_check(self, user: str) -> str | None:
        """Reset the devices' latches (recorded before they are touched), wait for fresh
        readings, then refuse the clear while a trip condition persists."""
        current_run = self.run_id
        await self._record_now(lambda: self.records.record_command(
            current_run, user, "reset_latches", {"for": "clear"}, accepted=True, reason=None))
        source = f"clear:{user}"
        resets = [self.act.reset_rf_fault(source)]
        resets += [self.act.reset_axis_alarm(name, source)
                   for name, status in self.telemetry.axes.items() if status.alarm]
        io = self.telemetry.safety
        if io is not None and io.heartbeat_latched:
            resets.append(self.act.reset_heartbeat_latch(source))
        await asyncio.gather(*resets, return_exceptions=True)
        await asyncio.sleep(3 / min(poll_hz(self.line, "rf"), poll_hz(self.line, "carriage")))
        active = [i.id for i in evaluate(self.signals(), self.line)
                  if i.reaction is not Reaction.ALARM]
        if active:
            return "cannot clear while trip conditions persist: " + ", ".join(active)
        return None

    def _refusal(self, command: str, plan: Plan | None) -> str | None:
        if command not in ("start", "hold", "unhold", "stop", "abort", "reset", "clear"):
            return f"{command!r} is not an operator command"
        if not self.records_ok and command not in SAFE_WARD_COMMANDS:
            return "run records unavailable: only hold, stop and abort are accepted"
        if self._reaction is not None and not self._reaction.done() and command != "abort":
            return "a safety reaction is in progress; wait for it to finish"
        refused = self.sm.can(command)
        if refused is not None:
            return refused.reason
        if command == "start":
            if plan is None:
                return "start needs a validated recipe"
            blockers = self.start_blockers()
            if blockers:
                return "interlocks not healthy: " + "; ".join(blockers)
        if command == "unhold":
            blockers = [b for b in self.start_blockers() if not b.startswith("alarm")]
            if blockers:
                return "interlocks not healthy: " + "; ".join(blockers)
        return None

    def trim_refusal(self, power_kw: float | None, traverse_pct: float | None) -> str | None:
        """Trims apply to a depositing run, within the bounds its current layer declares."""
        executor = self.executor
        if executor is None or self.sm.state not in (State.EXECUTE, State.HELD):
            return f"trim applies to a running deposition, not in {self.sm.state.value}"
        layer = executor.current_layer()
        if layer is None:
            return "trim applies during a deposit step"
        low, high = layer.power_trim_kw
        if power_kw is not None and not low <= power_kw <= high:
            return f"power trim {power_kw:g} kW outside the recipe's [{low:g}, {high:g}] kW"
        if traverse_pct is not None and not (
            layer.traverse_trim_pct[0] <= traverse_pct <= layer.traverse_trim_pct[1]
        ):
            low, high = layer.traverse_trim_pct
            return f"traverse trim {traverse_pct:g} % outside the recipe's [{low:g}, {high:g}] %"
        return None

    async def set_trim(self, power_kw: float | None, traverse_pct: float | None,
                       user: str) -> None:
        """Like a feed override: power at once, traverse from the next pass; recorded."""
        executor = self.executor
        if executor is None:
            return
        if power_kw is not None:
            executor.set_trim(power_kw=power_kw)
            self.record_setpoint("rf", "power_trim_kw", power_kw, f"trim:{user}")
            layer = executor.current_layer()
            if layer is not None and self.sm.state is State.EXECUTE:
                await self.act.set_power_kw(executor.layer_power(layer), f"trim:{user}")
        if traverse_pct is not None:
            executor.set_trim(traverse_pct=traverse_pct)
            self.record_setpoint("carriage", "traverse_trim_pct", traverse_pct, f"trim:{user}")

    def record_setpoint(self, device: str, quantity: str, value: float, source: str) -> None:
        self._on_setpoint(device, quantity, value, source)

    async def record_command(self, user: str, command: str, args: dict[str, Any],
                             accepted: bool, reason: str | None) -> None:
        """Record a command handled outside ``command`` (alarms, mode, trim, maintenance),
        durably, before the caller answers."""
        current_run = self.run_id
        await self._record_now(lambda: self.records.record_command(
            current_run, user, command, args, accepted=accepted, reason=reason))

    # -- records and fan-out ---------------------------------------------------------------
    def _record(self, write: Callable[[], Awaitable[Any]]) -> None:
        """Queue a record behind the ones already queued; never waits (rule 9)."""
        self.record_sink.put(write)

    async def _record_now(self, write: Callable[[], Awaitable[Any]]) -> None:
        """Queue a record in order and wait until it is durable; RecordsUnavailable if not."""
        await self.record_sink.durable(write)

    async def _record_flush(self) -> None:
        await self.record_sink.flush()

    @property
    def records_ok(self) -> bool:
        """The last record write succeeded."""
        return self.record_sink.ok

    def _records_unavailable(self, exc: RecordsUnavailable) -> None:
        if self.sm.state is State.EXECUTE and self._exec_task is not None:
            self._exec_task.cancel()
            assert self._tg is not None
            self._tg.create_task(self._records_failed(exc), name="records-failed")

    def _on_transition(self, transition: Any) -> None:
        run_id = self.run_id
        self._record(lambda: self.records.record_state(
            run_id, transition.from_state.value, transition.to_state.value, transition.cause))
        self.fanout.publish({"kind": "state", "from": transition.from_state.value,
                             "to": transition.to_state.value, "cause": transition.cause})
        if transition.to_state in FINAL_STATES and run_id is not None:
            outcome = OUTCOME[transition.to_state]
            self.outcome_reason = transition.cause
            self._record(lambda: self.records.end_run(run_id, outcome))
            self.finished.set()

    def _on_alarm(self, event: AlarmEvent) -> None:
        run_id = self.run_id
        self._record(lambda: self.records.record_alarm(run_id, event))
        self.fanout.publish({"kind": "alarm", "id": event.alarm_id, "state": event.to_state.value,
                             "priority": event.priority.value, "message": event.message,
                             "first_out": event.first_out})

    def _on_setpoint(self, device: str, quantity: str, value: float | bool | str,
                     source: str) -> None:
        run_id = self.run_id
        number = float(value) if isinstance(value, bool | int | float) else 0.0
        self._record(lambda: self.records.record_setpoint(run_id, device, quantity, number, source))

    async def _on_pass(self, summary: PassSummary, cursor: Cursor) -> None:
        run_id = self.run_id
        assert run_id is not None
        wall_to_epoch = time.time() - time.monotonic()
        await self.records.record_pass(run_id, PassRecord(
            layer=summary.layer, pass_index=summary.passes_done,
            diameter_mm=summary.diameter_mm, deposited_g=summary.deposited_g,
            duration_s=summary.duration_s, started_at=summary.started_wall + wall_to_epoch,
            ended_at=summary.ended_wall + wall_to_epoch))
        await self.records.checkpoint(run_id, summary.layer, summary.passes_done,
                                      cursor.to_json())
        self.fanout.publish({"kind": "pass", **summary.__dict__})

    def _on_progress(self, progress: dict[str, Any]) -> None:
        self.fanout.publish({"kind": "progress", **progress})

    async def _telemetry_loop(self) -> None:
        period = 1.0 / self.line.supervision.telemetry_record_hz
        while True:
            await asyncio.sleep(period)
            sample = self.telemetry.to_json()
            sample["state"] = self.sm.state.value
            if self.run_id is not None and self.sm.state in ACTIVE_STATES:
                self.records.add_telemetry(self.run_id, sample)
            self.fanout.publish({"kind": "telemetry", **sample})

    def status(self) -> dict[str, Any]:
        executor = self.executor
        return {
            "state": self.sm.state.value,
            "mode": self.sm.mode.value,
            "run_id": self.run_id,
            "trip_cause": self.trip_cause,
            "cursor": executor.cursor.to_json() if executor else None,
            "op": executor.current_op if executor else None,
            "alarms": [
                {"id": a.definition.id, "state": a.state.value,
                 "priority": a.definition.priority.value, "message": a.definition.message,
                 "first_out": a.first_out}
                for a in self.alarms.active()
            ],
            "telemetry": self.telemetry.to_json(),
            "commanded": self.act.snapshot(),
            "making_safe": self.rest.describe(),
        }
