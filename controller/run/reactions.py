"""The run's reactions, an object the supervisor holds: trip, suspend, hold, stop and abort, and
the failures under the executor that lead to them.

Each reaction cuts into the run's tasks (``RunTasks``) the one way, ``cut_in``: cancel them
without awaiting, stop the executor at its next wait, write the safe posture (RF off before
anything else, ``controller.safety.reactions.launch_posture``), and only then wait for the tasks
to be gone. What the reactions own: the trip's cause, whether the heartbeat may beat (stopped
as the last resort when nothing took the RF off), the measured reaction latencies, and the
memory of a failed re-ignition. What they need of the supervisor is ``ReactingLine``; which
reaction a failure under the executor leads to is ``failures``."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, Protocol

import structlog

from controller.config.line import LineConfig, cooling_speed_rpm
from controller.machine.polling import poll_hz
from controller.recipes.plan import CooldownOp, Plan
from controller.records.schema import RecordsUnavailable
from controller.run.executor import Executor, StepFailed
from controller.run.run_tasks import RunTasks
from controller.run.supervised_line import SupervisedLine
from controller.safety.envelope import Envelope
from controller.safety.interlocks import Interlock, Reaction, Signals, blocking_start
from controller.safety.postures import HOLD, POSTURE_FOR_REACTION, Posture, Rf
from controller.safety.reactions import LaunchedPosture, launch_posture, settle_posture
from controller.safety.states import ACTIVE_STATES, Command, Mode, State
from drivers.errors import DeviceError

log = structlog.get_logger(__name__)

TRIP_POSTURE = POSTURE_FOR_REACTION[Reaction.TRIP]


class ReactingLine(SupervisedLine, Protocol):
    """What the reactions need of the supervisor (which holds them), all read-only: no import
    of it, so no circle."""

    @property
    def plan(self) -> Plan | None: ...
    @property
    def executor(self) -> Executor | None: ...

    def signals(self) -> Signals: ...
    def envelope_now(self, state: State | None = None) -> Envelope: ...
    def record_event(self, kind: str, data: dict[str, Any]) -> None: ...
    def launch_executor(self, *, resume: bool) -> None: ...


def cooldown_op(plan: Plan | None, line: LineConfig) -> CooldownOp:
    """The plan's own cool-down, else the line's default one."""
    if plan is not None:
        for op in reversed(plan.steps):
            if isinstance(op, CooldownOp):
                return op
    return CooldownOp(
        power_ramp_down_s=30.0, duration_s=60.0, ar_slpm=0.0, o2_slpm=0.0,
        n2_slpm=line.mfc("mfc_n2").purge_slpm, spindle_rpm=cooling_speed_rpm(line),
    )


class Reactions:
    def __init__(self, sup: ReactingLine, tasks: RunTasks) -> None:
        self._sup = sup
        self._tasks = tasks
        self.trip_cause: str | None = None
        self.heartbeat_enabled = True
        self.latency_s: list[float] = []
        self._rf_off_wall = 0.0
        self._last_idle_posture = 0.0
        self._reignite_failed = False
        self._log = log.bind(line=sup.line.line)

    @property
    def busy(self) -> bool:
        """A safety reaction is in progress."""
        return self._tasks.reaction_busy

    def now_in(self, state: State) -> bool:
        """The state as of now: an await may have let a reaction change it."""
        return self._sup.sm.state is state

    def running(self) -> bool:
        """A run is active and not already aborting: a trip takes it to Aborting."""
        sm = self._sup.sm
        return sm.state in ACTIVE_STATES and sm.state is not State.ABORTING

    # -- what the supervisor's commands reset ----------------------------------------------
    def reset_for_run(self) -> None:
        """A new run starts without the last one's cause or failed re-ignition."""
        self._reignite_failed = False
        self.trip_cause = None

    def clear(self) -> None:
        """The operator cleared the latches: no cause, and the heartbeat beats again."""
        self.trip_cause = None
        self.heartbeat_enabled = True

    def clear_reignite_failure(self) -> None:
        self._reignite_failed = False
        self._sup.alarms.evaluate("reignite_failed", False, time.time())

    # -- the executor and the acting state's work ------------------------------------------
    async def stop_executor(self) -> None:
        """Stop the executor at its next wait, whatever happens, and wait for its task."""
        executor = self._sup.executor
        if executor is not None:
            executor.stop()
        await self._tasks.cancel_executor()

    async def cancel_acting(self) -> None:
        await self._tasks.cancel_acting()

    def _begin_acting(self, work: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """Run an acting state's work (Holding, Stopping) as an owned task, so the command is
        answered once the transition has begun and an abort can always cut in. The work is
        made inside the task: an abort that cancels it before it starts leaves nothing behind
        (a coroutine made here would be dropped never awaited)."""
        self._tasks.start_acting(self._acting(work, name), name)

    async def _acting(self, work: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # rule 1: an unhandled error ends in the safe state
            self._log.exception("acting.failed", name=name)
            await self.abort_with("internal_error", f"{name} failed: {exc!r}")

    async def cut_in(self, posture: Posture, source: str, *, acting_too: bool = True,
                     detected_at: float | None = None) -> None:
        """The one way a reaction takes over from the run's tasks: cancel them without
        awaiting (the RF-off write goes out first), stop the executor at its next wait, write
        the posture, then wait for the tasks to be gone."""
        await self._finish_cut(self._cut(posture, source, acting_too=acting_too), source,
                               acting_too=acting_too, detected_at=detected_at)

    def _cut(self, posture: Posture, source: str, *, acting_too: bool,
             entering: State | None = None) -> LaunchedPosture:
        """``cut_in``'s first half, without awaiting: from the safety cycle, a trip's writes
        are under way before the cycle goes on. ``entering``: the state the caller takes the
        run to right after, whose envelope the posture is chosen in."""
        self._tasks.cancel_now(acting_too=acting_too)
        executor = self._sup.executor
        if executor is not None:
            executor.stop()
        env = None if entering is None else self._sup.envelope_now(entering)
        return self._launch(posture, source, env)

    async def _finish_cut(self, launched: LaunchedPosture, source: str, *, acting_too: bool,
                          detected_at: float | None) -> None:
        await self._settle(launched, source, detected_at)
        await self.stop_executor()
        if acting_too:
            await self._tasks.cancel_acting()

    def _launch(self, posture: Posture, source: str,
                env: Envelope | None = None) -> LaunchedPosture:
        sup = self._sup
        return launch_posture(sup.act, posture, sup.line, sup.telemetry, source=source,
                              move_torch_slide=sup.sm.mode is Mode.PRODUCTION, env=env)

    async def safe_posture(self, posture: Posture, source: str,
                           detected_at: float | None = None) -> None:
        await self._settle(self._launch(posture, source), source, detected_at)

    async def _settle(self, launched: LaunchedPosture, source: str,
                      detected_at: float | None) -> None:
        sup = self._sup
        posture = launched.posture
        result = await settle_posture(launched)
        if posture.rf is Rf.OFF and result.rf_off_confirmed_by_write:
            self._rf_off_wall = time.monotonic()  # older RF readings predate the write
        if detected_at is not None:
            self.latency_s.append(time.monotonic() - detected_at)
        if not result.rf_off_confirmed_by_write and "safety_io" in result.failures:
            # Neither the generator nor the PLC took the RF off (its RF permit): the last
            # resort is to stop the heartbeat, so the safety PLC drops the RF enable by itself
            # (rule 4), and say so.
            self.heartbeat_enabled = False
            self._log.error("trip.rf_off_unconfirmed", heartbeat="stopped")
        elif not result.rf_off_confirmed_by_write:
            self._log.warning("trip.rf_off_by_permit_only", failures=result.failures)
        sup.record_event("posture", {"posture": posture.name, "source": source,
                                     "failures": result.failures})

    async def make_safe(self, source: str) -> None:
        """Drive the machine to the safe state outside a run (e.g. after a restart)."""
        await self.safe_posture(TRIP_POSTURE, source)

    # -- hold, stop, abort -----------------------------------------------------------------
    async def hold(self, cause: str) -> None:
        self._sup.sm.apply(Command.HOLD, cause=cause)
        await self.stop_executor()
        await self._tasks.cancel_acting()  # a suspension waiting to re-ignite gives way
        self._begin_acting(self._hold_work, "holding")

    async def _hold_work(self) -> None:
        posture: Posture = HOLD
        executor = self._sup.executor
        if executor is None or not executor.plasma_lit:
            posture = replace(HOLD, rf=Rf.OFF)
        await self.safe_posture(posture, "hold")
        await self._wait_carriage_parked()
        if self._sup.sm.state is State.HOLDING:
            self._sup.sm.complete(cause="held")

    async def _wait_carriage_parked(self) -> None:
        """Holding completes when the carriage has reached its turning point (or gave up)."""
        sup = self._sup
        target = sup.act.commanded.axis_targets.get("carriage")
        if target is None:
            return
        speed = sup.line.supervision.carriage_reposition_mm_min
        travel = sup.line.axis("carriage")
        budget = sup.clock.wall_budget(
            abs(travel.max_position_mm - travel.min_position_mm) / speed * 60
        )
        deadline = time.monotonic() + budget
        tolerance = sup.line.supervision.position_tolerance_mm
        await asyncio.sleep(2 / poll_hz(sup.line, "carriage"))  # a fresh status after the move
        while time.monotonic() < deadline:
            status = sup.telemetry.axes.get("carriage")
            if status is not None and abs(status.position_mm - target) <= tolerance \
                    and not status.moving:
                return
            await asyncio.sleep(0.02)
        self._log.warning("hold.carriage_not_parked", target=target)

    async def stop(self, cause: str) -> None:
        self._sup.sm.apply(Command.STOP, cause=cause)
        await self.stop_executor()
        await self._tasks.cancel_acting()  # a hold in progress gives way to the stop
        self._begin_acting(self._stop_work, "stopping")

    async def _stop_work(self) -> None:
        executor = self._sup.executor
        try:
            if executor is not None:
                executor.release()  # the cool-down is the stop's own work
                await executor.cool_down(cooldown_op(self._sup.plan, self._sup.line))
            else:
                await self.safe_posture(TRIP_POSTURE, "stop")
        except (DeviceError, StepFailed) as exc:
            self._log.error("stop.failed", error=str(exc))
            await self.safe_posture(TRIP_POSTURE, "stop-fallback")
        if self._sup.sm.state is State.STOPPING:
            self._sup.sm.complete(cause="stopped")

    async def operator_abort(self, user: str) -> None:
        self._sup.sm.apply(Command.ABORT, cause=f"operator {user}")
        await self.cut_in(TRIP_POSTURE, "abort")
        if self._sup.sm.state is State.ABORTING:
            self._sup.sm.complete(cause="safe state reached")

    async def abort_with(self, alarm_tag: str, reason: str) -> None:
        sm = self._sup.sm
        self._sup.alarms.evaluate(alarm_tag, True, time.time())
        self.trip_cause = self.trip_cause or alarm_tag
        if sm.state in (State.ABORTING, State.ABORTED):
            return
        sm.apply(Command.ABORT, cause=reason)
        await self.safe_posture(TRIP_POSTURE, f"abort:{alarm_tag}")
        if self.now_in(State.ABORTING):
            sm.complete(cause="safe state reached")

    # -- trips and suspends ----------------------------------------------------------------
    def _rf_may_be_on(self) -> bool:
        telemetry = self._sup.telemetry
        rf_health = telemetry.health.get("rf")
        fresh_rf = rf_health is not None and rf_health.last_ok_wall > self._rf_off_wall
        return self._sup.act.commanded.rf_on or (
            fresh_rf and telemetry.rf is not None and telemetry.rf.rf_on
        )

    def begin_trip(self, interlock: Interlock, detected_at: float) -> None:
        if self.busy:
            return
        running = self.running()
        if not running and not self._rf_may_be_on():
            return  # nothing to make safe: the alarm is raised and start is refused
        if not running and time.monotonic() - self._last_idle_posture < 1.0:
            return  # outside a run, retry an unconfirmed safe state once a second, not per poll
        if not running:
            self._last_idle_posture = time.monotonic()
        self.trip_cause = self.trip_cause or interlock.id
        # The abort and the posture's writes start here, in the safety cycle: the writes
        # take their buses at the loop's next turn; the reaction's task waits for them.
        launched, source = self._begin_cut_for(interlock, running)
        self._tasks.start_reaction(self._finish_trip(interlock, launched, source, detected_at),
                                   f"trip-{interlock.id}")

    async def trip_now(self, interlock: Interlock) -> None:
        """Trip at once, from the task at hand (a failure under the executor)."""
        running = self.running()
        self.trip_cause = self.trip_cause or interlock.id
        launched, source = self._begin_cut_for(interlock, running)
        await self._finish_trip(interlock, launched, source, time.monotonic())

    def _begin_cut_for(self, interlock: Interlock, running: bool) -> tuple[LaunchedPosture, str]:
        # Two reactions may race (the poller's and the executor's view of the same failure):
        # the first takes the abort, the second only adds its writes. The writes are launched
        # before the transition, whose listeners (records, live feeds, the run's bookkeeping)
        # would otherwise delay them; they are chosen in the Aborting envelope all the same.
        sm = self._sup.sm
        aborting = running and sm.can(Command.ABORT) is None
        source = f"trip:{interlock.id}"
        launched = self._cut(POSTURE_FOR_REACTION[interlock.reaction], source, acting_too=True,
                             entering=State.ABORTING if aborting else None)
        if aborting:
            sm.apply(Command.ABORT, cause=f"interlock {interlock.id}")
        return launched, source

    async def _finish_trip(self, interlock: Interlock, launched: LaunchedPosture, source: str,
                           detected_at: float) -> None:
        await self._finish_cut(launched, source, acting_too=True, detected_at=detected_at)
        if self._sup.sm.state is State.ABORTING:
            self._sup.sm.complete(cause=f"safe state reached after {interlock.id}")

    def begin_suspend(self, interlock: Interlock) -> None:
        if self.busy:
            return
        self._tasks.start_reaction(self.suspend(interlock), "suspend")

    async def suspend(self, interlock: Interlock) -> None:
        self._sup.sm.apply(Command.SUSPEND, cause=interlock.id)
        await self.cut_in(POSTURE_FOR_REACTION[Reaction.SUSPEND], f"suspend:{interlock.id}",
                          acting_too=False)
        # The purge and the wait for recovery are the acting state's work, not the safety
        # reaction's: an operator may hold or stop the run meanwhile, and it gives way.
        self._begin_acting(functools.partial(self._suspended_work, interlock), "suspending")

    async def _suspended_work(self, interlock: Interlock) -> None:
        sup = self._sup
        await sup.clock.sleep(sup.line.supervision.purge_before_reignite_s)
        if sup.sm.state is not State.SUSPENDING:
            return
        sup.sm.complete(cause=f"purged after {interlock.id}")
        await self._auto_unsuspend(interlock)

    async def _auto_unsuspend(self, interlock: Interlock) -> None:
        """Re-ignite and resume, once the external condition has gone."""
        sup = self._sup
        while sup.sm.state is State.SUSPENDED and not self._reignite_failed:
            signals = sup.signals()
            if interlock.id == "link_precursor" and not signals.link_precursor:
                await asyncio.sleep(0.1)
                continue
            if blocking_start(signals, sup.line) and any(
                i.id != "flame_out" for i in blocking_start(signals, sup.line)
            ):
                await asyncio.sleep(0.1)
                continue
            sup.sm.apply(Command.UNSUSPEND, cause=f"{interlock.id} recovered")
            assert sup.executor is not None
            sup.executor.release(reignite_attempts=sup.line.supervision.reignite_attempts)
            sup.launch_executor(resume=True)
            return

    # -- failures under the executor -------------------------------------------------------
    async def ignition_failed(self, exc: StepFailed) -> None:
        sm = self._sup.sm
        if sm.state in (State.UNSUSPENDING, State.EXECUTE):
            self._reignite_failed = sm.state is State.UNSUSPENDING
            self._sup.alarms.evaluate("reignite_failed", True, time.time())
            sm.apply(Command.SUSPEND, cause=str(exc))
            await self.safe_posture(POSTURE_FOR_REACTION[Reaction.SUSPEND], "ignition_failed")
            if self.now_in(State.SUSPENDING):  # unless a trip or an abort cut in
                sm.complete(cause="ignition failed: waiting for the operator")
        else:
            await self.abort_with("step_failed", str(exc))

    def records_unavailable(self, exc: RecordsUnavailable) -> None:
        """The records cannot be written (or stalled): stop depositing now, hold from a task of
        its own; the alarm in any state."""
        self._sup.alarms.evaluate("records_unavailable", True, time.time())
        if self._sup.sm.state is State.EXECUTE and self._tasks.executor_running:
            self._tasks.cancel_now(acting_too=False)
            self._tasks.spawn(self.records_failed(exc), "records-failed")

    def safety_cycle_starved(self, gap_s: float) -> None:
        """The event loop let the safety cycle stall past max_safety_gap_s: nobody watched
        the machine meanwhile, so the run holds (the PLC's heartbeat covers a longer stall)."""
        if self._sup.sm.state is State.EXECUTE and self._tasks.executor_running:
            self._tasks.cancel_now(acting_too=False)
            self._tasks.spawn(self.hold(cause=f"safety cycle stalled {gap_s:.3f} s"),
                              "cycle-starved")

    async def records_failed(self, exc: Exception) -> None:
        self._sup.alarms.evaluate("records_unavailable", True, time.time())
        if self._sup.sm.state is State.EXECUTE:
            await self.hold(cause=f"records unavailable: {exc}")
