"""The supervisor's reactions: trip, suspend, hold, stop and abort, and the failures under the
executor that lead to them.

A mixin of ``Supervisor``: the reactions cut into the run's tasks (the executor, the acting
state's work) and its state machine, which the supervisor owns; the attributes declared below
are that shared state. Every reaction writes its safe posture first (RF off before anything
else) and only then waits for the tasks it cancelled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from controller.config.line import (
    AXIS_NAMES,
    PLASMA_GASES,
    PRECURSORS,
    LineConfig,
    cooling_speed_rpm,
)
from controller.machine.polling import poll_hz
from controller.machine.telemetry import Telemetry
from controller.recipes.plan import CooldownOp, Plan
from controller.records.run_records import RunRecords
from controller.run.executor import Executor, StepFailed
from controller.run.process_clock import ProcessClock
from controller.safety.alarms import AlarmManager
from controller.safety.interlocks import (
    INTERLOCKS_BY_ID,
    Interlock,
    Reaction,
    Signals,
    blocking_start,
    evaluate,
)
from controller.safety.judgement import Judge
from controller.safety.postures import HOLD, POSTURE_FOR_REACTION, Posture, Rf
from controller.safety.reactions import apply_posture
from controller.safety.states import ACTIVE_STATES, Command, Mode, State, StateMachine
from controller.safety.writer import Actuators
from drivers.errors import DeviceError, DeviceExceptionResponse


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


class SupervisorReactions:
    # The supervisor's state the reactions read and change (assigned in Supervisor.__init__).
    line: LineConfig
    records: RunRecords
    clock: ProcessClock
    sm: StateMachine
    telemetry: Telemetry
    alarms: AlarmManager
    act: Actuators
    run_id: int | None
    plan: Plan | None
    executor: Executor | None
    trip_cause: str | None
    heartbeat_enabled: bool
    reaction_latency_s: list[float]
    _judge: Judge
    _rf_off_wall: float
    _last_idle_posture: float
    _tg: asyncio.TaskGroup | None
    _exec_task: asyncio.Task[None] | None
    _acting_task: asyncio.Task[None] | None
    _reaction: asyncio.Task[None] | None
    _reignite_failed: bool
    _log: Any

    if TYPE_CHECKING:
        # Provided by Supervisor.
        def signals(self) -> Signals: ...
        def _record(self, write: Callable[[], Awaitable[Any]]) -> None: ...
        def _launch_executor(self, *, resume: bool) -> None: ...

    def _now_in(self, state: State) -> bool:
        """The state as of now: an await may have let a reaction change it."""
        return self.sm.state is state

    # -- the executor's task ---------------------------------------------------------------
    async def _cancel_executor(self) -> None:
        task = self._exec_task
        self._exec_task = None
        if self.executor is not None:
            self.executor.stop()  # seen at its next wait, whatever happens
        if task is not None and not task.done():
            await cancel_and_wait([task])

    # -- acting states: hold, stop, abort --------------------------------------------------
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
        await self._cancel_acting()  # a suspension waiting to re-ignite gives way to the hold
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
        await asyncio.sleep(2 / poll_hz(self.line, "carriage"))  # a fresh status after the move
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
                self.executor.release()  # the cool-down is the stop's own work
                await self.executor.cool_down(self._cooldown_op())
            else:
                await self._safe_posture(POSTURE_FOR_REACTION[Reaction.TRIP], "stop")
        except (DeviceError, StepFailed) as exc:
            self._log.error("stop.failed", error=str(exc))
            await self._safe_posture(POSTURE_FOR_REACTION[Reaction.TRIP], "stop-fallback")
        if self.sm.state is State.STOPPING:
            self.sm.complete(cause="stopped")

    def _cooldown_op(self) -> CooldownOp:
        if self.plan is not None:
            for op in reversed(self.plan.steps):
                if isinstance(op, CooldownOp):
                    return op
        return CooldownOp(
            power_ramp_down_s=30.0, duration_s=60.0, ar_slpm=0.0, o2_slpm=0.0,
            n2_slpm=self.line.mfc("mfc_n2").purge_slpm,
            spindle_rpm=cooling_speed_rpm(self.line),
        )

    async def _cut_in(self, posture: Posture, source: str, *, acting_too: bool = True,
                      detected_at: float | None = None) -> None:
        """The one way a reaction takes over from the run's tasks: cancel them without
        awaiting (the RF-off write goes out first), stop the executor at its next wait, write
        the posture, then wait for the tasks to be gone."""
        tasks = (self._exec_task, self._acting_task) if acting_too else (self._exec_task,)
        for task in tasks:
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        if self.executor is not None:
            self.executor.stop()
        await self._safe_posture(posture, source, detected_at)
        await self._cancel_executor()
        if acting_too:
            await self._cancel_acting()

    async def _operator_abort(self, user: str) -> None:
        self.sm.apply(Command.ABORT, cause=f"operator {user}")
        await self._cut_in(POSTURE_FOR_REACTION[Reaction.TRIP], "abort")
        if self.sm.state is State.ABORTING:
            self.sm.complete(cause="safe state reached")

    async def make_safe(self, source: str) -> None:
        """Drive the machine to the safe state outside a run (e.g. after a restart)."""
        await self._safe_posture(POSTURE_FOR_REACTION[Reaction.TRIP], source)

    # -- trips and suspends ----------------------------------------------------------------
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
        # Two reactions may race (the poller's and the executor's view of the same failure):
        # the first takes the abort, the second only adds its writes.
        if running and self.sm.can(Command.ABORT) is None:
            self.sm.apply(Command.ABORT, cause=f"interlock {interlock.id}")
        await self._cut_in(POSTURE_FOR_REACTION[interlock.reaction], f"trip:{interlock.id}",
                           detected_at=detected_at)
        if self.sm.state is State.ABORTING:
            self.sm.complete(cause=f"safe state reached after {interlock.id}")

    async def _safe_posture(self, posture: Posture, source: str,
                            detected_at: float | None = None) -> None:
        result = await apply_posture(self.act, posture, self.line, self.telemetry, source=source,
                                     move_torch_slide=self.sm.mode is Mode.PRODUCTION)
        if posture.rf is Rf.OFF and result.rf_off_confirmed_by_write:
            self._rf_off_wall = time.monotonic()  # older RF readings predate the write
        if detected_at is not None:
            self.reaction_latency_s.append(time.monotonic() - detected_at)
        if not result.rf_off_confirmed_by_write and "safety_io" in result.failures:
            # Neither the generator nor the PLC took the RF off (its RF permit): the last
            # resort is to stop the heartbeat, so the safety PLC drops the RF enable by itself
            # (rule 4), and say so.
            self.heartbeat_enabled = False
            self._log.error("trip.rf_off_unconfirmed", heartbeat="stopped")
        elif not result.rf_off_confirmed_by_write:
            self._log.warning("trip.rf_off_by_permit_only", failures=result.failures)
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
        await self._cut_in(POSTURE_FOR_REACTION[Reaction.SUSPEND], f"suspend:{interlock.id}",
                           acting_too=False)
        # The purge and the wait for recovery are the acting state's work, not the safety
        # reaction's: an operator may hold or stop the run meanwhile, and it gives way.
        self._begin_acting(self._suspended_work(interlock), "suspending")

    async def _suspended_work(self, interlock: Interlock) -> None:
        await self.clock.sleep(self.line.supervision.purge_before_reignite_s)
        if self.sm.state is not State.SUSPENDING:
            return
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
            self.executor.release(reignite_attempts=self.line.supervision.reignite_attempts)
            self._launch_executor(resume=True)
            return

    # -- failures under the executor -------------------------------------------------------
    def _interlock_for_device_error(self, exc: DeviceError) -> Interlock | None:
        """The link interlock of the device (or bus) that failed under the executor."""
        names = {exc.device} | {n for n, d in self.line.devices.items() if d.bus == exc.device}
        if names & set(AXIS_NAMES):
            return INTERLOCKS_BY_ID["link_drives"]
        if "rf" in names:
            return INTERLOCKS_BY_ID["link_rf"]
        if "safety_io" in names:
            return INTERLOCKS_BY_ID["link_safety_io"]
        if names & set(PRECURSORS):
            return INTERLOCKS_BY_ID["link_precursor"]
        if names & set(PLASMA_GASES):
            return INTERLOCKS_BY_ID["link_plasma_gas"]
        return None

    async def _device_failed(self, exc: DeviceError) -> None:
        """A write under the executor failed before the poller declared the link lost: react
        as the link interlock would, a moment earlier."""
        self._log.error("executor.device_error", device=exc.device, error=str(exc))
        if isinstance(exc, DeviceExceptionResponse):
            # The device answered and refused: not a lost link. Its status says why (a drive
            # alarm, an RF fault); give the pollers a moment to bring that status in.
            await asyncio.sleep(3 / min(poll_hz(self.line, "rf"), poll_hz(self.line, "carriage")))
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
        self._judge.mark_tripped(interlock.id)
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
            if self._now_in(State.SUSPENDING):  # unless a trip or an abort cut in
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
        if self._now_in(State.ABORTING):
            self.sm.complete(cause="safe state reached")

    async def _records_failed(self, exc: Exception) -> None:
        self.alarms.evaluate("records_unavailable", True, time.time())
        if self.sm.state is State.EXECUTE:
            await self._hold(cause=f"records unavailable: {exc}")
