"""The supervisor: owns the devices, the state machine, the interlocks and the run.

One asyncio TaskGroup holds a poller per device (safety I/O fastest, with the heartbeat and the
interlock evaluation after every read), the telemetry fan-out, the record writer, and the
running executor. Every command goes: state machine (allowed here? else the reason) -> audit
record (durable) -> action. Every trip goes: safe-state writes (RF first) -> record."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Self

import structlog

from controller.actuators import Actuators
from controller.alarm_catalog import alarm_definitions
from controller.alarms import AlarmEvent, AlarmManager
from controller.executor import Cursor, Executor, IgnitionFailed, PassSummary, StepFailed
from controller.interlocks import (
    INTERLOCKS_BY_ID,
    Interlock,
    Reaction,
    Signals,
    blocking_start,
    evaluate,
)
from controller.machine import AXIS_NAMES, MFC_NAMES, Machine
from controller.maintenance import Maintenance
from controller.plan import CooldownOp, Plan
from controller.process_clock import ProcessClock
from controller.reactions import apply_posture
from controller.records import PassRecord, RecordsUnavailable, RunHeader, RunRecords
from controller.safe_state import HOLD, POSTURE_FOR_REACTION, Posture, Rf
from controller.states import ACTIVE_STATES, Command, State, StateMachine
from controller.telemetry import Fanout, Telemetry
from drivers.errors import DeviceError, DeviceExceptionResponse

log = structlog.get_logger(__name__)

DEVICE_NAMES = ("rf", "safety_io", *MFC_NAMES, *AXIS_NAMES, "diameter_gauge")
FINAL_STATES = frozenset({State.COMPLETE, State.STOPPED, State.ABORTED})
OUTCOME = {State.COMPLETE: "complete", State.STOPPED: "stopped", State.ABORTED: "aborted"}


@dataclass(frozen=True)
class CommandResult:
    command: str
    accepted: bool
    reason: str | None = None
    state: str | None = None


async def cancel_and_wait(tasks: list[asyncio.Task[Any]], attempts: int = 20) -> None:
    """Cancel tasks and wait until they are done, cancelling again if need be: on Python 3.11
    ``asyncio.wait_for`` can swallow a cancellation that races with its inner future (fixed in
    3.12), which would leave a poller running forever."""
    for _ in range(attempts):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.5)


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
        self.alarms = AlarmManager(alarm_definitions(self.line))
        self.act = Actuators(machine, self._on_setpoint)
        self.run_id: int | None = None
        self.plan: Plan | None = None
        self.executor: Executor | None = None
        self.outcome_reason: str | None = None
        self.finished = asyncio.Event()
        self.trip_cause: str | None = None
        self.heartbeat_enabled = True
        self.armed = False
        self._stopping = False
        self._rf_off_wall = 0.0
        self._last_idle_posture = 0.0
        self._margin_since: dict[str, float] = {}
        self.reaction_latency_s: list[float] = []
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._exec_task: asyncio.Task[None] | None = None
        self._acting_task: asyncio.Task[None] | None = None
        self._reaction: asyncio.Task[None] | None = None
        self._record_queue: asyncio.Queue[Callable[[], Awaitable[Any]]] = asyncio.Queue()
        self._tripped: set[str] = set()
        self._reignite_failed = False
        self._log = log.bind(line=self.line.line)
        self.maintenance = Maintenance(self, lease_s=self.line.supervision.jog_lease_s)
        self.sm.add_listener(self._on_transition)
        self.alarms.subscribe(self._on_alarm)

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        for device in DEVICE_NAMES:
            self.telemetry.link(device).timeout_s = self.line.devices[device].link_timeout_s
        spawn = self._tg.create_task
        self._tasks.append(spawn(self._record_writer(), name="records"))
        self._tasks.append(spawn(self._poll_safety(), name="poll-safety_io"))
        self._tasks.append(spawn(self._poll("rf", self.machine.rf.read, self._store_rf),
                                 name="poll-rf"))
        for name, mfc in self.machine.mfcs.items():
            self._tasks.append(spawn(self._poll(name, mfc.read, self._store_mfc(name)),
                                     name=f"poll-{name}"))
        for name, axis in self.machine.axes.items():
            self._tasks.append(spawn(self._poll(name, axis.read, self._store_axis(name)),
                                     name=f"poll-{name}"))
        self._tasks.append(spawn(self._poll("diameter_gauge", self.machine.gauge.read,
                                            self._store_gauge), name="poll-gauge"))
        self._tasks.append(spawn(self._telemetry_loop(), name="telemetry"))
        self._tasks.append(spawn(self.maintenance.watchdog(), name="jog-leases"))
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
            await asyncio.wait_for(self._record_queue.join(), timeout=10)
        self._stopping = True
        await cancel_and_wait(self._tasks)
        assert self._tg is not None
        await self._tg.__aexit__(None, None, None)
        await self.machine.close()

    # -- polling ---------------------------------------------------------------------------
    def _poll_hz(self, device: str) -> float:
        return self.line.devices[device].poll_hz

    async def _poll(
        self,
        device: str,
        read: Callable[[], Awaitable[Any]],
        store: Callable[[Any], None],
    ) -> None:
        period = 1.0 / self._poll_hz(device)
        health = self.telemetry.link(device)
        next_at = time.monotonic()
        while not self._stopping:
            health.polls += 1
            try:
                store(await read())
            except DeviceError as exc:
                health.failures += 1
                health.consecutive_failures += 1
                health.last_error = str(exc)
            else:
                health.ever_ok = True
                health.consecutive_failures = 0
                health.last_ok_wall = time.monotonic()
            next_at += period
            delay = next_at - time.monotonic()
            if delay < 0:  # overran (a timeout): do not try to catch up in a burst
                next_at = time.monotonic()
                delay = 0
            await asyncio.sleep(delay)

    async def _poll_safety(self) -> None:
        """Safety I/O: read, heartbeat, then judge every interlock, every cycle."""
        device = "safety_io"
        period = 1.0 / self._poll_hz(device)
        health = self.telemetry.link(device)
        next_at = time.monotonic()
        while not self._stopping:
            health.polls += 1
            try:
                self.telemetry.safety = await self.machine.safety_io.read()
                health.ever_ok = True
                health.consecutive_failures = 0
                health.last_ok_wall = time.monotonic()
                if self.heartbeat_enabled:
                    await self.machine.safety_io.heartbeat()
            except DeviceError as exc:
                health.failures += 1
                health.consecutive_failures += 1
                health.last_error = str(exc)
            self._judge_interlocks()
            next_at += period
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at = time.monotonic()
                delay = 0
            await asyncio.sleep(delay)

    def _store_rf(self, sample: Any) -> None:
        self.telemetry.rf = sample

    def _store_mfc(self, name: str) -> Callable[[Any], None]:
        def store(sample: Any) -> None:
            self.telemetry.mfcs[name] = sample
        return store

    def _store_axis(self, name: str) -> Callable[[Any], None]:
        def store(sample: Any) -> None:
            self.telemetry.axes[name] = sample
        return store

    def _store_gauge(self, sample: Any) -> None:
        self.telemetry.gauge = sample

    def link_lost(self, device: str) -> bool:
        """A link that answered once and has since gone quiet (not one still coming up)."""
        health = self.telemetry.health.get(device)
        return health is not None and health.ever_ok and not self.link_alive(device)

    def link_alive(self, device: str) -> bool:
        health = self.telemetry.health.get(device)
        return health is not None and health.ok

    async def wait_links(self, timeout_s: float | None = None) -> list[str]:
        """Wait until every device has answered; returns those that never did."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.link_wait_s)
        while time.monotonic() < deadline:
            missing = [d for d in DEVICE_NAMES if not self.link_alive(d)]
            if not missing:
                return []
            await asyncio.sleep(0.05)
        return [d for d in DEVICE_NAMES if not self.link_alive(d)]

    # -- interlocks ------------------------------------------------------------------------
    def signals(self) -> Signals:
        t = self.telemetry
        io = t.safety
        rf = t.rf
        executor = self.executor
        expected = executor is not None and executor.plasma_expected and self.act.commanded.rf_on
        lit = bool((rf is not None and rf.plasma_lit) or (io is not None and io.plasma_optical))
        reflected = 0.0
        if rf is not None and rf.forward_kw > 1.0:
            reflected = rf.reflected_kw / rf.forward_kw
        io_cfg = self.line.safety_io()
        base = Signals(
            plasma_lit=lit,
            plasma_expected=expected,
            flame_out=expected and not lit and self.sm.state is State.EXECUTE,
            rf_fault=bool(rf is not None and rf.fault),
            reflected_ratio=reflected,
            drive_alarm=any(a.alarm for a in t.axes.values()),
            link_rf=not self.link_lost("rf"),
            link_safety_io=not self.link_lost("safety_io"),
            link_drives=not any(self.link_lost(a) for a in AXIS_NAMES),
            link_plasma_gas=not (self.link_lost("mfc_o2") or self.link_lost("mfc_ar")),
            link_precursor=not (self.link_lost("mfc_sicl4") or self.link_lost("mfc_dopant")),
            link_gauge=not self.link_lost("diameter_gauge"),
            rf_on=bool(rf is not None and rf.rf_on),
            water_flow_l_min=io_cfg.water_flow_min_l_min,
            water_temp_c=io_cfg.water_temp_max_c,
            exhaust_draft_pa=io_cfg.exhaust_trip_pa - 1,
        )
        if io is None:
            return base
        return replace(
            base,
            estop_ok=io.estop_ok,
            safety_relay_ok=io.safety_relay_ok,
            doors_closed=io.doors_closed,
            scrubber_ready=io.scrubber_ready,
            gas_supply_ok=io.gas_supply_ok,
            water_flow_l_min=io.water_flow_l_min,
            water_temp_c=io.water_temp_c,
            exhaust_draft_pa=io.exhaust_draft_pa,
            gas_detector_ppm=io.gas_detector_ppm,
        )

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
                                   beacon_green=False, beacon_amber=True)

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

    def _judge_interlocks(self) -> None:
        if not self.armed:
            return
        started = time.monotonic()
        now = time.time()
        signals = self.signals()
        tripped = evaluate(signals, self.line)
        tripped_ids = {i.id for i in tripped}
        state = self.sm.state.value
        for interlock_id in self._tripped - tripped_ids:
            self.alarms.evaluate(f"interlock.{interlock_id}", False, now, machine_state=state)
        for interlock in tripped:
            if interlock.id not in self._tripped:
                self.alarms.evaluate(f"interlock.{interlock.id}", True, now, machine_state=state)
        self._tripped = tripped_ids
        self._judge_deviations(now, state)
        if not tripped:
            return
        worst = tripped[0]
        if worst.reaction in (Reaction.ESTOP, Reaction.TRIP, Reaction.TRIP_GAS):
            self._begin_trip(worst, started)
        elif worst.reaction is Reaction.SUSPEND and self.sm.state in (
            State.EXECUTE, State.UNSUSPENDING
        ) and self._exec_task is not None:
            self._begin_suspend(worst)

    def _judge_deviations(self, now: float, state: str) -> None:
        if self.sm.state not in (State.EXECUTE,):
            return
        commanded = self.act.commanded
        for name in MFC_NAMES:
            reading = self.telemetry.mfcs.get(name)
            setpoint = commanded.flows_slpm.get(name)
            if reading is not None and setpoint is not None:
                self.alarms.evaluate_deviation(f"{name}.flow", reading.mass_slpm, setpoint, now,
                                               machine_state=state)
        rf = self.telemetry.rf
        if rf is not None and commanded.rf_on and rf.setpoint_kw == commanded.power_kw:
            self.alarms.evaluate_deviation("rf.power", rf.forward_kw, commanded.power_kw, now,
                                           machine_state=state)
        self._judge_gap(now, state)
        self._judge_margins(now, state)

    def _judge_gap(self, now: float, state: str) -> None:
        executor = self.executor
        slide = self.telemetry.axes.get("torch_slide")
        layer = executor.current_layer() if executor is not None else None
        diameter = executor.cursor.diameter_mm if executor is not None else None
        if slide is None or layer is None or diameter is None:
            return
        gap = self.line.geometry.coil_to_axis_at_slide_zero_mm + slide.position_mm - diameter / 2
        self.alarms.evaluate_deviation("torch_slide.gap", gap, layer.coil_gap_mm, now,
                                       machine_state=state)

    def _judge_margins(self, now: float, state: str) -> None:
        """Early warnings: a value near its trip for a while, before the interlock acts."""
        io, rf, cfg = self.telemetry.safety, self.telemetry.rf, self.line.safety_io()
        sup = self.line.supervision
        conditions: dict[str, bool] = {}
        if io is not None:
            conditions["water_flow_margin"] = (
                io.water_flow_l_min < cfg.water_flow_min_l_min + sup.water_flow_margin_l_min)
            conditions["exhaust_margin"] = (
                io.exhaust_draft_pa > cfg.exhaust_trip_pa - sup.exhaust_margin_pa)
        if rf is not None and rf.forward_kw > 1.0:
            trip = self.line.rf().reflected_trip_fraction
            conditions["reflected_power_margin"] = (
                rf.reflected_kw / rf.forward_kw > trip * sup.reflected_warning_fraction)
        wall = time.monotonic()
        for tag, condition in conditions.items():
            since = self._margin_since.get(tag)
            if condition and since is None:
                self._margin_since[tag] = wall
            elif not condition:
                self._margin_since.pop(tag, None)
            active = condition and (
                wall - self._margin_since.get(tag, wall) >= sup.warning_delay_s)
            if active != self.alarms.status(tag).condition:
                self.alarms.evaluate(tag, active, now, machine_state=state)

    # -- reactions -------------------------------------------------------------------------
    def _begin_trip(self, interlock: Interlock, detected_at: float) -> None:
        if self._reaction is not None and not self._reaction.done():
            return
        running = self.sm.state in ACTIVE_STATES and self.sm.state is not State.ABORTING
        rf_health = self.telemetry.health.get("rf")
        fresh_rf = rf_health is not None and rf_health.last_ok_wall > self._rf_off_wall
        rf_may_be_on = self.act.commanded.rf_on or (
            fresh_rf and self.telemetry.rf is not None and self.telemetry.rf.rf_on
        )
        if not running and not rf_may_be_on:
            return  # nothing to make safe: the alarm is raised and start is refused
        if not running and time.monotonic() - self._last_idle_posture < 1.0:
            return  # outside a run, retry an unconfirmed safe state once a second, not per poll
        if not running:
            self._last_idle_posture = time.monotonic()
        self.trip_cause = self.trip_cause or interlock.id
        assert self._tg is not None
        self._reaction = self._tg.create_task(
            self._trip(interlock, detected_at, running), name=f"trip-{interlock.id}"
        )

    async def _trip(self, interlock: Interlock, detected_at: float, running: bool) -> None:
        posture = POSTURE_FOR_REACTION[interlock.reaction]
        for task in (self._exec_task, self._acting_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()  # no await: the RF-off write goes out first
        if self.executor is not None:
            self.executor.stop_requested = True  # no await: the RF-off write must go out first
        # Two reactions may race (the poller's and the executor's view of the same failure):
        # the first takes the abort, the second only adds its writes.
        if running and self.sm.can(Command.ABORT) is None:
            self.sm.apply(Command.ABORT, cause=f"interlock {interlock.id}")
        await self._safe_posture(posture, f"trip:{interlock.id}", detected_at)
        await self._cancel_executor()
        await self._cancel_acting()
        if self.sm.state is State.ABORTING:
            self.sm.complete(cause=f"safe state reached after {interlock.id}")

    async def _safe_posture(self, posture: Posture, source: str,
                            detected_at: float | None = None) -> None:
        result = await apply_posture(self.act, posture, self.line, self.telemetry, source=source)
        if posture.rf is Rf.OFF and result.rf_off_confirmed_by_write:
            self._rf_off_wall = time.monotonic()  # older RF readings predate the write
        if detected_at is not None:
            self.reaction_latency_s.append(time.monotonic() - detected_at)
        if not result.rf_off_confirmed_by_write:
            # The generator did not take the RF-off write: stop the heartbeat, so the safety
            # PLC drops the RF enable by itself (rule 4), and say so.
            self.heartbeat_enabled = False
            self._log.error("trip.rf_off_unconfirmed", heartbeat="stopped")
        run_id = self.run_id
        self._record(lambda: self.records.record_event(
            run_id, "posture", {"posture": posture.name, "source": source,
                                "failures": result.failures}))

    def _begin_suspend(self, interlock: Interlock) -> None:
        if self._reaction is not None and not self._reaction.done():
            return
        assert self._tg is not None
        self._reaction = self._tg.create_task(self._suspend(interlock), name="suspend")

    async def _suspend(self, interlock: Interlock) -> None:
        self.sm.apply(Command.SUSPEND, cause=interlock.id)
        exec_task = self._exec_task
        if exec_task is not None:
            exec_task.cancel()
        if self.executor is not None:
            self.executor.stop_requested = True
        posture = POSTURE_FOR_REACTION[Reaction.SUSPEND]
        await self._safe_posture(posture, f"suspend:{interlock.id}")
        await self._cancel_executor()
        await self.clock.sleep(self.line.supervision.purge_before_reignite_s)
        self.sm.complete(cause=f"purged after {interlock.id}")
        await self._auto_unsuspend(interlock)

    async def _auto_unsuspend(self, interlock: Interlock) -> None:
        """Re-ignite and resume, once the external condition has gone."""
        while self.sm.state is State.SUSPENDED and not self._reignite_failed:
            signals = self.signals()
            if interlock.id == "link_precursor" and not signals.link_precursor:
                await asyncio.sleep(0.1)
                continue
            if blocking_start(signals, self.line) and any(
                i.id != "flame_out" for i in blocking_start(signals, self.line)
            ):
                await asyncio.sleep(0.1)
                continue
            self.sm.apply(Command.UNSUSPEND, cause=f"{interlock.id} recovered")
            assert self.executor is not None
            self.executor.reignite_attempts = self.line.supervision.reignite_attempts
            self._launch_executor(resume=True)
            return

    # -- the executor ----------------------------------------------------------------------
    def _launch_executor(self, *, resume: bool) -> None:
        assert self.executor is not None
        assert self._tg is not None
        self.executor.stop_requested = False
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
        self._exec_task = None
        if self.sm.state is State.EXECUTE:
            self.sm.complete(cause="recipe finished")
            await self._cool_down_if_hot("completing")
            self.sm.complete(cause="run complete")

    def _resumed(self) -> None:
        if self.sm.state in (State.UNHOLDING, State.UNSUSPENDING, State.STARTING):
            self.sm.complete(cause="process re-established")

    def _interlock_for_device_error(self, exc: DeviceError) -> Interlock | None:
        """The link interlock of the device (or bus) that failed under the executor."""
        names = {exc.device} | {n for n, d in self.line.devices.items() if d.bus == exc.device}
        if names & set(AXIS_NAMES):
            return INTERLOCKS_BY_ID["link_drives"]
        if "rf" in names:
            return INTERLOCKS_BY_ID["link_rf"]
        if "safety_io" in names:
            return INTERLOCKS_BY_ID["link_safety_io"]
        if names & {"mfc_sicl4", "mfc_dopant"}:
            return INTERLOCKS_BY_ID["link_precursor"]
        if names & {"mfc_ar", "mfc_o2", "mfc_n2"}:
            return INTERLOCKS_BY_ID["link_plasma_gas"]
        return None

    async def _device_failed(self, exc: DeviceError) -> None:
        """A write under the executor failed before the poller declared the link lost: react
        as the link interlock would, a moment earlier."""
        self._log.error("executor.device_error", device=exc.device, error=str(exc))
        if isinstance(exc, DeviceExceptionResponse):
            # The device answered and refused: not a lost link. Its status says why (a drive
            # alarm, an RF fault); give the pollers a moment to bring that status in.
            await asyncio.sleep(3 / min(self._poll_hz("rf"), self._poll_hz("carriage")))
            tripped = [i for i in evaluate(self.signals(), self.line)
                       if i.reaction is not Reaction.ALARM]
            if tripped:
                self.trip_cause = self.trip_cause or tripped[0].id
                running = self.sm.state in ACTIVE_STATES and self.sm.state is not State.ABORTING
                await self._trip(tripped[0], time.monotonic(), running)
            else:
                await self._abort_with("step_failed", f"device refused a command: {exc}")
            return
        interlock = self._interlock_for_device_error(exc)
        if interlock is None:
            await self._abort_with("internal_error", f"device error in recipe: {exc}")
            return
        self.alarms.evaluate(f"interlock.{interlock.id}", True, time.time())
        self._tripped.add(interlock.id)
        if interlock.reaction is Reaction.SUSPEND and self.sm.state is State.EXECUTE:
            await self._suspend(interlock)
            return
        running = self.sm.state in ACTIVE_STATES and self.sm.state is not State.ABORTING
        self.trip_cause = self.trip_cause or interlock.id
        await self._trip(interlock, time.monotonic(), running)

    async def _ignition_failed(self, exc: StepFailed) -> None:
        now = time.time()
        if self.sm.state in (State.UNSUSPENDING, State.EXECUTE):
            self._reignite_failed = self.sm.state is State.UNSUSPENDING
            self.alarms.evaluate("reignite_failed", True, now)
            self.sm.apply(Command.SUSPEND, cause=str(exc))
            await self._safe_posture(POSTURE_FOR_REACTION[Reaction.SUSPEND], "ignition_failed")
            self.sm.complete(cause="ignition failed: waiting for the operator")
        else:
            await self._abort_with("step_failed", str(exc))

    async def _abort_with(self, alarm_tag: str, reason: str) -> None:
        self.alarms.evaluate(alarm_tag, True, time.time())
        self.trip_cause = self.trip_cause or alarm_tag
        if self.sm.state in (State.ABORTING, State.ABORTED):
            return
        self.sm.apply(Command.ABORT, cause=reason)
        await self._safe_posture(POSTURE_FOR_REACTION[Reaction.TRIP], f"abort:{alarm_tag}")
        self.sm.complete(cause="safe state reached")

    async def _records_failed(self, exc: Exception) -> None:
        self.alarms.evaluate("records_unavailable", True, time.time())
        if self.sm.state is State.EXECUTE:
            await self._hold(cause=f"records unavailable: {exc}")

    async def _cancel_executor(self) -> None:
        task = self._exec_task
        self._exec_task = None
        if self.executor is not None:
            self.executor.stop_requested = True  # seen at its next wait, whatever happens
        if task is not None and not task.done():
            await cancel_and_wait([task])

    def _cooldown_op(self) -> CooldownOp:
        if self.plan is not None:
            for op in reversed(self.plan.steps):
                if isinstance(op, CooldownOp):
                    return op
        return CooldownOp(
            power_ramp_down_s=30.0, duration_s=60.0, ar_slpm=0.0, o2_slpm=0.0,
            n2_slpm=self.line.mfc("mfc_n2").purge_slpm,
            spindle_rpm=self.line.axis("spindle").cooling_speed_rpm or 10.0,
        )

    async def _cool_down_if_hot(self, source: str) -> None:
        executor = self.executor
        if executor is None:
            return
        io = self.telemetry.safety
        hot = io is None or io.rod_temperature_c > self.line.supervision.cooldown_rod_temp_c
        if self.act.commanded.rf_on or hot:
            await executor.cool_down(self._cooldown_op())
        self._log.info("supervisor.cooled", source=source)

    # -- commands --------------------------------------------------------------------------
    async def command(self, command: str, user: str, *, reason: str | None = None,
                      plan: Plan | None = None, header: RunHeader | None = None,
                      cursor: Cursor | None = None, run_id: int | None = None) -> CommandResult:
        """An operator command: checked, recorded durably, then carried out."""
        if command == "clear" and self.sm.state is State.ABORTED:
            await self._reset_device_latches(user)
        refusal = self._refusal(command, plan)
        accepted = refusal is None
        current_run = self.run_id
        if not (accepted and command == "start"):  # an accepted start is recorded in its run
            await self._record_now(lambda: self.records.record_command(
                current_run, user, command, {"reason": reason}, accepted=accepted,
                reason=refusal))
        if refusal is not None:
            self._log.warning("command.refused", command=command, user=user, reason=refusal)
            return CommandResult(command, False, refusal, self.sm.state.value)
        self._log.info("command.accepted", command=command, user=user)
        if command == "start":
            assert plan is not None
            assert header is not None
            await self._start(plan, header, cursor, run_id)
        elif command == "hold":
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
        await self._record_flush()
        return CommandResult(command, True, None, self.sm.state.value)

    async def _reset_device_latches(self, user: str) -> None:
        """Clearing an abort also resets the devices' own latches (RF fault, drive alarms),
        then waits for fresh readings, so the check that follows sees the truth."""
        source = f"clear:{user}"
        resets = [self.act.reset_rf_fault(source)]
        resets += [self._reset_axis(name, source) for name, status in self.telemetry.axes.items()
                   if status.alarm]
        await asyncio.gather(*resets, return_exceptions=True)
        await asyncio.sleep(3 / min(self._poll_hz("rf"), self._poll_hz("carriage")))

    async def _reset_axis(self, axis: str, source: str) -> None:
        await self.machine.axes[axis].reset_alarm()
        self._on_setpoint(axis, "alarm_reset", True, source)

    def _refusal(self, command: str, plan: Plan | None) -> str | None:
        if command not in ("start", "hold", "unhold", "stop", "abort", "reset", "clear"):
            return f"{command!r} is not an operator command"
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
        if command == "clear":
            active = [i.id for i in evaluate(self.signals(), self.line)
                      if i.reaction is not Reaction.ALARM]
            if active:
                return "cannot clear while trip conditions persist: " + ", ".join(active)
        if command == "unhold":
            blockers = [b for b in self.start_blockers() if not b.startswith("alarm")]
            if blockers:
                return "interlocks not healthy: " + "; ".join(blockers)
        return None

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
        await self.act.set_outputs("start", exhaust_fan=True, gas_master_valve=True,
                                   precursor_valve=False, beacon_green=True)
        for axis in AXIS_NAMES:
            await self.act.enable_axis(axis, "start")
        await self._home_if_needed()
        self._launch_executor(resume=cursor is not None)
        if cursor is None:
            self.sm.complete(cause="machine ready")

    async def _home_if_needed(self) -> None:
        for axis in ("carriage", "torch_slide"):
            status = self.telemetry.axes.get(axis)
            if status is not None and status.homed:
                continue
            await self.act.home_axis(axis, "start")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                status = self.telemetry.axes.get(axis)
                if status is not None and status.homed and not status.moving:
                    break
            else:
                raise StepFailed("start", f"{axis} did not home")

    def _begin_acting(self, work: Awaitable[None], name: str) -> None:
        """Run an acting state's work (Holding, Stopping) as an owned task, so the command is
        answered once the transition has begun and an abort can always cut in."""
        assert self._tg is not None
        self._acting_task = self._tg.create_task(self._acting(work, name), name=name)

    async def _acting(self, work: Awaitable[None], name: str) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # rule 1: an unhandled error ends in the safe state
            self._log.exception("acting.failed", name=name)
            await self._abort_with("internal_error", f"{name} failed: {exc!r}")

    async def _cancel_acting(self) -> None:
        task = self._acting_task
        self._acting_task = None
        if task is not None and not task.done() and task is not asyncio.current_task():
            await cancel_and_wait([task])

    async def _hold(self, cause: str) -> None:
        self.sm.apply(Command.HOLD, cause=cause)
        await self._cancel_executor()
        self._begin_acting(self._hold_work(), "holding")

    async def _hold_work(self) -> None:
        posture: Posture = HOLD
        executor = self.executor
        if executor is None or not executor.plasma_lit:
            posture = replace(HOLD, rf=Rf.OFF)
        await self._safe_posture(posture, "hold")
        await self._wait_carriage_parked()
        if self.sm.state is State.HOLDING:
            self.sm.complete(cause="held")

    async def _wait_carriage_parked(self) -> None:
        """Holding completes when the carriage has reached its turning point (or gave up)."""
        target = self.act.commanded.axis_targets.get("carriage")
        if target is None:
            return
        speed = self.line.supervision.carriage_reposition_mm_min
        travel = self.line.axis("carriage")
        budget = self.clock.wall_budget(
            abs(travel.max_position_mm - travel.min_position_mm) / speed * 60
        )
        deadline = time.monotonic() + budget
        tolerance = self.line.supervision.position_tolerance_mm
        await asyncio.sleep(2 / self._poll_hz("carriage"))  # a fresh status after the move
        while time.monotonic() < deadline:
            status = self.telemetry.axes.get("carriage")
            if status is not None and abs(status.position_mm - target) <= tolerance \
                    and not status.moving:
                return
            await asyncio.sleep(0.02)
        self._log.warning("hold.carriage_not_parked", target=target)

    async def _stop(self, cause: str) -> None:
        self.sm.apply(Command.STOP, cause=cause)
        await self._cancel_executor()
        await self._cancel_acting()  # a hold in progress gives way to the stop
        self._begin_acting(self._stop_work(), "stopping")

    async def _stop_work(self) -> None:
        try:
            if self.executor is not None:
                self.executor.stop_requested = False  # the cool-down is the stop's own work
                await self.executor.cool_down(self._cooldown_op())
            else:
                await self._safe_posture(POSTURE_FOR_REACTION[Reaction.TRIP], "stop")
        except (DeviceError, StepFailed) as exc:
            self._log.error("stop.failed", error=str(exc))
            await self._safe_posture(POSTURE_FOR_REACTION[Reaction.TRIP], "stop-fallback")
        if self.sm.state is State.STOPPING:
            self.sm.complete(cause="stopped")

    async def _operator_abort(self, user: str) -> None:
        self.sm.apply(Command.ABORT, cause=f"operator {user}")
        for task in (self._exec_task, self._acting_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()  # no await: the RF-off write goes out first
        if self.executor is not None:
            self.executor.stop_requested = True
        await self._safe_posture(POSTURE_FOR_REACTION[Reaction.TRIP], "abort")
        await self._cancel_executor()
        await self._cancel_acting()
        if self.sm.state is State.ABORTING:
            self.sm.complete(cause="safe state reached")

    async def make_safe(self, source: str) -> None:
        """Drive the machine to the safe state outside a run (e.g. after a restart)."""
        await self._safe_posture(POSTURE_FOR_REACTION[Reaction.TRIP], source)

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
            executor.trim_power_kw = power_kw
            self.record_setpoint("rf", "power_trim_kw", power_kw, f"trim:{user}")
            layer = executor.current_layer()
            if layer is not None and self.sm.state is State.EXECUTE:
                await self.act.set_power_kw(executor.layer_power(layer), f"trim:{user}")
        if traverse_pct is not None:
            executor.trim_traverse_pct = traverse_pct
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
        self._record_queue.put_nowait(write)

    async def _record_now(self, write: Callable[[], Awaitable[Any]]) -> None:
        self._record(write)
        await self._record_flush()

    async def _record_flush(self) -> None:
        await self._record_queue.join()

    async def _record_writer(self) -> None:
        while True:
            write = await self._record_queue.get()
            try:
                await write()
            except RecordsUnavailable as exc:
                self._log.error("records.unavailable", error=str(exc))
                if self.sm.state is State.EXECUTE and self._exec_task is not None:
                    self._exec_task.cancel()
                    assert self._tg is not None
                    self._tg.create_task(self._records_failed(exc), name="records-failed")
            except Exception:
                self._log.exception("records.write_failed")
            finally:
                self._record_queue.task_done()

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
        }
