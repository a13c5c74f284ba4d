"""The supervisor: owns the devices, the state machine, the interlocks and the run.

One asyncio TaskGroup holds a poller per device (safety I/O fastest, with the heartbeat and the
interlock evaluation after every read), the telemetry fan-out, the record writer, and the
running executor. Every command goes: state machine (allowed here? else the reason) -> audit
record (durable) -> action. Every trip goes: safe-state writes (RF first) -> record.

Its parts are objects it holds, each with a small interface (a Protocol of what it needs of
the supervisor): ``RunTasks`` (the run's tasks), ``Reactions`` (trip, suspend, hold, stop,
abort), ``CurrentRun`` (start, the executor's task, completion, passes), ``Commands`` (the
operator's commands and trims), ``RecordSink`` (every record, in order), ``Maintenance`` and
``RestKeeper``; next door, ``polling`` and ``judgement``. Here: the lifecycle, links, signals
and the envelope, the safety cycle, and the records and fan-out of what happens."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Self

import structlog

from controller.config.line import DEVICE_NAMES, cooling_speed_rpm
from controller.machine.devices import Machine
from controller.machine.polling import Pollers, poll_hz
from controller.machine.polling import link_alive as _link_alive
from controller.machine.polling import link_lost as _link_lost
from controller.machine.polling import wait_links as _wait_links
from controller.machine.telemetry import Fanout, Telemetry
from controller.recipes.plan import Plan
from controller.records.run_records import RunHeader, RunRecords
from controller.run.commands import CommandResult, Commands
from controller.run.current_run import CurrentRun
from controller.run.executor import Cursor, Executor
from controller.run.failures import Failures
from controller.run.maintenance import Maintenance
from controller.run.process_clock import ProcessClock
from controller.run.reactions import Reactions
from controller.run.record_sink import RecordSink
from controller.run.rest_keeper import RestKeeper
from controller.run.run_tasks import RunTasks, cancel_and_wait
from controller.safety.alarm_catalog import alarm_definitions
from controller.safety.alarms import AlarmEvent, AlarmManager
from controller.safety.cycle_watchdog import SafetyCycleWatchdog
from controller.safety.envelope import Envelope, EnvelopeInputs, compute
from controller.safety.interlocks import (
    Interlock,
    Reaction,
    Signals,
    blocking_start,
    evaluate,
)
from controller.safety.judgement import GapTarget, Judge, build_signals
from controller.safety.reconciler import Reconciler
from controller.safety.states import ACTIVE_STATES, State, StateMachine, Transition
from controller.safety.writer import Actuators, EnvelopeRefused
from drivers.errors import DeviceError

log = structlog.get_logger(__name__)

WATCHDOG_FALLBACK_PERIOD_S = 0.5  # how often the drives' watchdog speed is checked
IDLE_ATTEMPTS = 5  # writes of the idle posture before make_idle gives up


class Supervisor:
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
        self.alarms = AlarmManager(alarm_definitions(self.line),
                                   max_shelve_s=self.line.supervision.alarm_shelve_max_s)
        self.act = Actuators(machine, self.envelope_now, self._on_setpoint)
        self.act.add_refusal_listener(self._on_refusal)
        self.armed = False
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._owned: set[asyncio.Task[None]] = set()
        self._log = log.bind(line=self.line.line)
        self._judge = Judge(self.line, self.telemetry, self.alarms, self.act)
        self.run_tasks = RunTasks()
        self.reactions = Reactions(self, self.run_tasks)
        failures = Failures(self, self.reactions, self._judge)
        self.run = CurrentRun(self, self.run_tasks, self.reactions, failures)
        self.commands = Commands(self, self.run, self.reactions)
        records_timeout_s = self.line.supervision.records_timeout_s
        self.record_sink = RecordSink(timeout_s=records_timeout_s,
                                      on_unavailable=self.reactions.records_unavailable)
        # Every awaited record (a pass, a checkpoint, a run's start) is bounded the same way: a
        # stalled disk holds the run within records_timeout_s (rule 9), never the executor.
        records.timeout_s = records_timeout_s
        records.add_failure_listener(self.reactions.records_unavailable)
        self.cycle_watchdog = SafetyCycleWatchdog(
            1.0 / poll_hz(self.line, "safety_io"), self.line.supervision.max_safety_gap_s)
        self.reconciler = Reconciler(self.act, self.telemetry, self.line,
                                     spawn=self._spawn_owned, alarm=self._alarm_level)
        self._pollers = Pollers(machine, self.telemetry,
                                heartbeat_enabled=self._may_beat,
                                judge=self._safety_cycle,
                                configure_axis=self._configure_axis_watchdog,
                                on_claim_lost=self._on_claim_lost)
        self.maintenance = Maintenance(self, lease_s=self.line.supervision.jog_lease_s)
        self.rest = RestKeeper(self)
        self._watchdog_fallbacks: dict[str, float] = {}  # per drive, as last configured
        self.sm.add_listener(self._on_transition)
        self.alarms.subscribe(self._on_alarm)

    # -- the run and the reactions, as the rest of the controller sees them ------------------
    @property
    def run_id(self) -> int | None:
        return self.run.run_id

    @property
    def plan(self) -> Plan | None:
        return self.run.plan

    @property
    def executor(self) -> Executor | None:
        return self.run.executor

    @property
    def finished(self) -> asyncio.Event:
        return self.run.finished

    @property
    def outcome_reason(self) -> str | None:
        return self.run.outcome_reason

    @property
    def trip_cause(self) -> str | None:
        return self.reactions.trip_cause

    @property
    def heartbeat_enabled(self) -> bool:
        return self.reactions.heartbeat_enabled

    @property
    def reaction_latency_s(self) -> list[float]:
        return self.reactions.latency_s

    def launch_executor(self, *, resume: bool) -> None:
        self.run.launch_executor(resume=resume)

    async def make_safe(self, source: str) -> None:
        """Drive the machine to the safe state outside a run (e.g. after a restart)."""
        await self.reactions.make_safe(source)

    async def command(self, command: str, user: str, *, reason: str | None = None,
                      plan: Plan | None = None, header: RunHeader | None = None,
                      cursor: Cursor | None = None, run_id: int | None = None) -> CommandResult:
        """An operator command: checked, recorded durably, then carried out."""
        return await self.commands.command(command, user, reason=reason, plan=plan,
                                           header=header, cursor=cursor, run_id=run_id)

    def trim_refusal(self, power_kw: float | None, traverse_pct: float | None) -> str | None:
        return self.commands.trim_refusal(power_kw, traverse_pct)

    async def set_trim(self, power_kw: float | None, traverse_pct: float | None,
                       user: str) -> None:
        await self.commands.set_trim(power_kw, traverse_pct, user)

    async def reset_controller_loss(self, user: str) -> list[str]:
        return await self.commands.reset_controller_loss(user)

    async def restart_cooling_rotation(self, user: str) -> float:
        return await self.commands.restart_cooling_rotation(user)

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        # The line is claimed at its safety PLC before any poller runs: the safety cycle's
        # reconciliation writes, and this line may be another controller's (rule 8).
        try:
            await self._pollers.claim_line(self.link_wait_s)
        except BaseException:
            await self.machine.close()
            raise
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self.run_tasks.attach(self._tg)
        for device in DEVICE_NAMES:
            self.telemetry.link(device).timeout_s = self.line.devices[device].link_timeout_s
        spawn = self._tg.create_task
        self._tasks.append(spawn(self.record_sink.run(), name="records"))
        self._tasks.extend(self._pollers.spawn(spawn))
        self._tasks.append(spawn(self._telemetry_loop(), name="telemetry"))
        self._tasks.append(spawn(self._watch_loop(), name="loop-watchdog"))
        self._tasks.append(spawn(self._keep_watchdog_fallbacks(), name="watchdog-fallbacks"))
        self._tasks.append(spawn(self.maintenance.watchdog(), name="jog-leases"))
        self._tasks.append(spawn(self.rest.watch(), name="rest-keeper"))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.reactions.stop_executor()
        await self.reactions.cancel_acting()
        await self.run_tasks.finish_reaction(timeout_s=5)
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

    def start_blockers(self) -> list[str]:
        """Why a run cannot start now (empty when it can)."""
        reasons = [f"{d}: no link" for d in DEVICE_NAMES if not self.link_alive(d)]
        reasons += [f"interlock {i.id}: {i.description}"
                    for i in blocking_start(self.signals(), self.line)]
        io = self.telemetry.safety
        if io is not None and io.heartbeat_latched:
            # The PLC holds RF, precursors and heaters off until the latch is reset: a start
            # now would only abort at ignition.
            reasons.append("safety PLC: heartbeat loss latched (reset by clear or a restart)")
        return reasons

    @property
    def heartbeats(self) -> int:
        """Heartbeats written since start (each one a completed safety cycle)."""
        return self._pollers.beats

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

    # -- the envelope ----------------------------------------------------------------------
    def envelope_inputs(self, signals: Signals | None = None,
                        tripped: list[Interlock] | None = None) -> EnvelopeInputs:
        """Everything the envelope looks at, from the latest telemetry (rule 10); ``signals``
        and the interlocks they trip, when the caller has just judged them."""
        if signals is None:
            signals = self.signals()
        if tripped is None:
            tripped = evaluate(signals, self.line)
        conditions = {i.id for i in tripped}
        io = self.telemetry.safety if self.link_alive("safety_io") else None
        if (io is not None and io.heartbeat_latched) or self._pollers.claim_lost_to is not None:
            # A line lost to another controller is a lost heartbeat: the PLC acted alone.
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

    def envelope_now(self, state: State | None = None) -> Envelope:
        """The envelope now; with ``state``, as it will be once the run is in that state (a
        trip's posture is chosen inside the Aborting envelope before the transition is
        taken, so that its writes are not held up by the transition's records)."""
        inputs = self.envelope_inputs()
        if state is not None:
            inputs = dataclasses.replace(inputs, state=state)
        return compute(inputs, self.line)

    async def make_idle(self, source: str = "idle") -> None:
        """The idle posture: exhaust running (the draft interlock needs it), valves closed,
        heaters off, RF off. A write that fails (a garbled frame, a link coming up) is tried
        again a few times; DeviceError if it still fails (the envelope's reconciler keeps the
        outputs safe meanwhile)."""
        for attempt in range(IDLE_ATTEMPTS):
            try:
                await self.act.rf_off(source)
                await self.act.set_outputs(
                    source, exhaust_fan=True, gas_master_valve=False, precursor_valve=False,
                    heater_a=False, heater_b=False, rf_permit=False, beacon_green=False,
                    beacon_amber=True)
                return
            except DeviceError as exc:
                if attempt == IDLE_ATTEMPTS - 1:
                    raise
                self._log.warning("idle.retry", source=source, error=str(exc))
                await asyncio.sleep(0.2)

    # -- the safety cycle ------------------------------------------------------------------
    def _safety_cycle(self) -> None:
        """After every safety I/O read: judge (and start a trip's reaction), then compute the
        envelope and reconcile every output into it. Never awaits a device."""
        state = self.sm.state
        signals = self.signals()
        tripped = self._judge_interlocks(signals)
        if self.sm.state is not state:
            signals, tripped = self.signals(), None  # a trip has moved the run: judge anew
        self.reconciler.cycle(compute(self.envelope_inputs(signals, tripped), self.line))

    async def _watch_loop(self) -> None:
        """The loop-lag watchdog: a probe that sleeps one safety period wakes as late as the
        safety cycle would (the device's own answer time aside, which its link health
        watches): late by more than a period is annunciated, past max_safety_gap_s the run
        holds."""
        while True:
            await asyncio.sleep(self.cycle_watchdog.period_s)
            self._watch_cycle()

    def _watch_cycle(self) -> None:
        health = self.cycle_watchdog.cycle()
        self._alarm_level("safety_cycle_late", health.late,
                          value=round(self.cycle_watchdog.worst_gap_s * 1000, 1))
        self._alarm_level("safety_cycle_starved", health.starved,
                          value=round(health.gap_s * 1000, 1))
        if health.starved:
            self._log.error("safety_cycle.starved", gap_s=round(health.gap_s, 3))
            self.reactions.safety_cycle_starved(health.gap_s)

    def _gap_target(self) -> GapTarget | None:
        executor = self.executor
        layer = executor.current_layer() if executor is not None else None
        if executor is None or layer is None or executor.cursor.diameter_mm is None:
            return None
        return GapTarget(layer.coil_gap_mm, executor.cursor.diameter_mm)

    def _judge_interlocks(self, signals: Signals) -> list[Interlock] | None:
        """Start the worst tripped interlock's reaction, then annunciate; the tripped
        interlocks (None while not armed: nothing judged)."""
        if not self.armed:
            return None
        started = time.monotonic()

        def react(tripped: list[Interlock]) -> None:
            self._react(tripped[0], started)

        return self._judge.judge(signals, self.sm.state, self._gap_target(), time.time(),
                                 react)

    def _react(self, worst: Interlock, started: float) -> None:
        """Start the reaction the worst tripped interlock calls for, if any."""
        if worst.reaction in (Reaction.ESTOP, Reaction.TRIP, Reaction.TRIP_GAS):
            self.reactions.begin_trip(worst, started)
        elif worst.reaction is Reaction.SUSPEND and self.sm.state in (
            State.EXECUTE, State.UNSUSPENDING
        ) and self.run_tasks.executor_running:
            self.reactions.begin_suspend(worst)

    def _on_claim_lost(self, owner: int) -> None:
        self._alarm_level("line_claim_lost", True)

    def _may_beat(self) -> bool:
        return self.reactions.heartbeat_enabled and not self.reconciler.stop_heartbeat

    def _spawn_owned(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._owned.add(task)
        task.add_done_callback(self._owned.discard)

    def _alarm_level(self, alarm_id: str, active: bool, value: float | None = None) -> None:
        if active != self.alarms.status(alarm_id).condition:
            self.alarms.evaluate(alarm_id, active, time.time(), value=value,
                                 machine_state=self.sm.state.value)

    async def _configure_axis_watchdog(self, axis: str) -> None:
        """The drive's own communication watchdog (rule 11), set at connect and again when the
        rod crosses rod_rotation_stop_c: a named exception to the single writer, like the
        heartbeat. If the controller goes, a rotary drive turns a hot rod at its cooling speed
        and leaves a cold one still (a drive left enabled at rest must not start turning the
        moment `povd run` exits)."""
        cfg = self.line.axis(axis)
        hot = self.envelope_now().rod_hot  # an unknown temperature counts as hot
        fallback = cooling_speed_rpm(self.line) if cfg.motion == "rotary" and hot else 0.0
        await self.machine.axes[axis].configure_comm_watchdog(cfg.comm_watchdog_s, fallback)
        self._watchdog_fallbacks[axis] = fallback

    async def _keep_watchdog_fallbacks(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_FALLBACK_PERIOD_S)
            await self.refresh_watchdog_fallbacks()

    async def refresh_watchdog_fallbacks(self) -> None:
        """The rotary drives' watchdog speed follows the rod (a level, rule 10); `povd run`
        calls it once more before it leaves the machine."""
        hot = self.envelope_now().rod_hot
        for axis in self.machine.axes:
            cfg = self.line.axis(axis)
            wanted = cooling_speed_rpm(self.line) if cfg.motion == "rotary" and hot else 0.0
            set_to = self._watchdog_fallbacks.get(axis)
            if set_to is None or set_to == wanted or not self.link_alive(axis):
                continue  # not configured yet (the link's first answer does it)
            try:
                await self._configure_axis_watchdog(axis)
            except DeviceError as exc:
                self._log.warning("watchdog_fallback.failed", axis=axis, error=str(exc))

    # -- records and fan-out ---------------------------------------------------------------
    def record(self, write: Callable[[], Awaitable[Any]]) -> None:
        """Queue a record behind the ones already queued; never waits (rule 9)."""
        self.record_sink.put(write)

    def record_event(self, kind: str, data: dict[str, Any]) -> None:
        run_id = self.run_id
        self.record(lambda: self.records.record_event(run_id, kind, data))

    def record_setpoint(self, device: str, quantity: str, value: float, source: str) -> None:
        self._on_setpoint(device, quantity, value, source)

    async def record_command(self, user: str, command: str, args: dict[str, Any],
                             accepted: bool, reason: str | None) -> None:
        """Record a command durably (RecordsUnavailable if not), before the caller answers."""
        current_run = self.run_id
        await self.record_sink.durable(lambda: self.records.record_command(
            current_run, user, command, args, accepted=accepted, reason=reason))

    def submit_command_record(self, user: str, command: str, args: dict[str, Any],
                              accepted: bool, reason: str | None) -> asyncio.Future[None]:
        """Queue a command's record in order without waiting (stop and abort act first)."""
        current_run = self.run_id
        return self.record_sink.submit(lambda: self.records.record_command(
            current_run, user, command, args, accepted=accepted, reason=reason))

    async def record_written(self, record: asyncio.Future[None]) -> bool:
        return await self.record_sink.written(record)

    async def record_settle(self) -> bool:
        return await self.record_sink.settle()

    async def record_flush(self) -> None:
        """Everything queued written, however long it takes (for tests and tools)."""
        await self.record_sink.flush()

    @property
    def records_ok(self) -> bool:
        """The last record write succeeded, in time."""
        return self.record_sink.ok and self.records.healthy

    def _on_refusal(self, refusal: EnvelopeRefused, source: str) -> None:
        self.record_event("envelope_refused", {
            "device": refusal.device, "quantity": refusal.quantity,
            "value": refusal.value, "reason": refusal.reason, "source": source})

    def _on_transition(self, transition: Transition) -> None:
        run_id = self.run_id
        self.record(lambda: self.records.record_state(
            run_id, transition.from_state.value, transition.to_state.value, transition.cause))
        self.fanout.publish({"kind": "state", "from": transition.from_state.value,
                             "to": transition.to_state.value, "cause": transition.cause})
        self.run.on_transition(transition.to_state, transition.cause)

    def _on_alarm(self, event: AlarmEvent) -> None:
        run_id = self.run_id
        self.record(lambda: self.records.record_alarm(run_id, event))
        self.fanout.publish({"kind": "alarm", "id": event.alarm_id, "state": event.to_state.value,
                             "priority": event.priority.value, "message": event.message,
                             "value": event.value, "first_out": event.first_out})

    def _on_setpoint(self, device: str, quantity: str, value: float | bool | str,
                     source: str) -> None:
        run_id = self.run_id
        number = float(value) if isinstance(value, bool | int | float) else 0.0
        self.record(lambda: self.records.record_setpoint(run_id, device, quantity, number, source))

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
                 "value": a.value, "first_out": a.first_out}
                for a in self.alarms.active()
            ],
            "telemetry": self.telemetry.to_json(),
            "commanded": self.act.snapshot(),
            "making_safe": self.rest.describe(),
        }
