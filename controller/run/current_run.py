"""The run in progress, an object the supervisor holds: its id, plan and executor; starting it
(records, outputs, drives enabled and homed), the executor's task and the reaction each of its
failures leads to, completing it (the cool-down of a hot rod), its passes and progress to the
records and the fan-out, and its end (outcome, ``finished``).

What it needs of the supervisor is ``RunningLine``; the run's tasks, the reactions and the
failures (which reaction a failure under the executor leads to) are given to it explicitly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from controller.config.line import AXIS_NAMES
from controller.machine.telemetry import Fanout
from controller.recipes.plan import DepositOp, LayerOp, Plan
from controller.records.run_records import PassRecord, RunHeader, RunRecords
from controller.run.executor import Cursor, Executor, PassSummary, StepFailed
from controller.run.failures import Failures
from controller.run.growth_control import Outlook
from controller.run.reactions import Reactions, cooldown_op
from controller.run.run_tasks import RunTasks
from controller.run.supervised_line import SupervisedLine
from controller.safety.states import Command, State
from controller.safety.writer import EnvelopeRefused
from drivers.errors import DeviceError

log = structlog.get_logger(__name__)

FINAL_STATES = frozenset({State.COMPLETE, State.STOPPED, State.ABORTED})
OUTCOME = {State.COMPLETE: "complete", State.STOPPED: "stopped", State.ABORTED: "aborted"}


class RunningLine(SupervisedLine, Protocol):
    """What the run needs of the supervisor (which holds it), all read-only: no import of it,
    so no circle."""

    @property
    def records(self) -> RunRecords: ...
    @property
    def fanout(self) -> Fanout: ...

    def record(self, write: Callable[[], Awaitable[Any]]) -> None: ...


class CurrentRun:
    def __init__(self, sup: RunningLine, tasks: RunTasks, reactions: Reactions,
                 failures: Failures) -> None:
        self._sup = sup
        self._tasks = tasks
        self._reactions = reactions
        self._failures = failures
        self.run_id: int | None = None
        self._checkpointed: tuple[int, int, dict[str, Any]] | None = None  # the last, as written
        self.plan: Plan | None = None
        self.executor: Executor | None = None
        self.outcome_reason: str | None = None
        self.finished = asyncio.Event()
        self._ended: int | None = None  # the run whose end is recorded
        self._log = log.bind(line=sup.line.line)

    # -- start -----------------------------------------------------------------------------
    async def start(self, plan: Plan, header: RunHeader, cursor: Cursor | None,
                    run_id: int | None) -> None:
        sup = self._sup
        self.plan = plan
        self._checkpointed = None  # (a new run's: none yet)
        # Trip alarms latched while idle whose condition has gone (the exhaust before the fan
        # ran, say) are cleared by the start itself, which is recorded.
        sup.alarms.clear_latches(header.operator, time.time())
        self.finished.clear()
        self._reactions.reset_for_run()
        self.run_id = await self._open_records(plan, header, cursor, run_id)
        self.executor = Executor(plan, sup.line, sup.act, sup.telemetry, sup.clock,
                                 cursor=cursor, on_pass=self._on_pass,
                                 on_progress=self._on_progress, on_outlook=self._on_outlook)
        sup.sm.apply(Command.START, cause=f"run {self.run_id}")
        try:
            await sup.act.set_outputs("start", exhaust_fan=True, gas_master_valve=True,
                                      precursor_valve=False, beacon_green=True)
            for axis in AXIS_NAMES:
                await sup.act.enable_axis(axis, "start")
            await self._home_if_needed()
        except (StepFailed, DeviceError, EnvelopeRefused) as exc:
            # A start that cannot finish ends like any failure in a run: safe state, Aborted,
            # recorded; never a unit left in Starting with the master valve open.
            if sup.sm.state is State.STARTING:
                await self._reactions.abort_with("step_failed", f"start failed: {exc}")
            return
        if sup.sm.state is not State.STARTING:
            return  # an abort, a stop or a trip cut in while the axes homed: nothing to run
        self.launch_executor(resume=cursor is not None)
        if cursor is None:
            sup.sm.complete(cause="machine ready")

    async def _open_records(self, plan: Plan, header: RunHeader, cursor: Cursor | None,
                            run_id: int | None) -> int:
        """A new run's record with its start command, or the resumed run's event."""
        records = self._sup.records
        if run_id is None:
            new_id = await records.start_run(header)
            await records.record_command(new_id, header.operator, "start",
                                         {"recipe": plan.name}, accepted=True)
            return new_id
        await records.record_event(
            run_id, "run_resumed", {"cursor": cursor.to_json() if cursor else None})
        return run_id

    async def _home_if_needed(self) -> None:
        sup = self._sup
        for axis in ("carriage", "torch_slide"):
            status = sup.telemetry.axes.get(axis)
            if status is not None and status.homed:
                continue
            await sup.act.home_axis(axis, "start")
            deadline = time.monotonic() + self.homing_budget_s(axis)
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                if sup.sm.state is not State.STARTING:
                    return
                status = sup.telemetry.axes.get(axis)
                if status is not None and status.homed and not status.moving:
                    break
            else:
                raise StepFailed("start", f"{axis} did not home")

    def homing_budget_s(self, axis: str) -> float:
        """Wall time for homing from the far end at setup speed (the drive's homing speed),
        with margin."""
        cfg = self._sup.line.axis(axis)
        travel = cfg.max_position_mm - cfg.min_position_mm
        return self._sup.clock.wall_budget(travel / cfg.setup_speed * 60 * 1.5) + 10.0

    # -- the executor's task ---------------------------------------------------------------
    def launch_executor(self, *, resume: bool) -> None:
        assert self.executor is not None
        self.executor.release()
        self._tasks.start_executor(self._run_executor(resume))

    async def _run_executor(self, resume: bool) -> None:
        executor = self.executor
        assert executor is not None
        try:
            await executor.run(resume=resume, on_resumed=self._resumed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The task hands over to a reaction, which must not wait for the task it runs in.
            self._tasks.executor_ended()
            await self._failures.react(exc)
            return
        if self._sup.sm.state is State.EXECUTE:
            # Still the executor's task: a trip during the cool-down cancels it.
            self._sup.sm.complete(cause="recipe finished")
            await self._cool_down_if_hot("completing")
            if self._reactions.now_in(State.COMPLETING):
                self._sup.sm.complete(cause="run complete")
        self._tasks.executor_ended()

    def _resumed(self) -> None:
        sm = self._sup.sm
        if sm.state in (State.UNHOLDING, State.UNSUSPENDING, State.STARTING):
            sm.complete(cause="process re-established")

    async def _cool_down_if_hot(self, source: str) -> None:
        executor = self.executor
        if executor is None:
            return
        sup = self._sup
        io = sup.telemetry.safety
        hot = io is None or io.rod_temperature_c > sup.line.safety_io().rod_rotation_stop_c
        if sup.act.commanded.rf_on or hot:
            await executor.cool_down(cooldown_op(self.plan, sup.line))
        self._log.info("supervisor.cooled", source=source)

    # -- passes, progress and the end ------------------------------------------------------
    def _on_outlook(self, outlook: Outlook | None) -> None:
        """Rule 12: the moment the loop cannot land the plan inside the trims, the operator
        is told where the run will end (the alarm's value: the final diameter) and what extra
        passes would land it; the run goes on at the limit."""
        sup = self._sup
        was = sup.alarms.status("growth_out_of_authority").condition
        final = None if outlook is None else round(outlook.final_mm, 3)
        sup.alarms.evaluate("growth_out_of_authority", outlook is not None, time.time(),
                            value=final)
        run_id = self.run_id
        if outlook is not None and not was and run_id is not None:
            details = {
                "expected_final_mm": final,
                "layers": [{"layer": o.index, "name": o.name,
                            "planned_mm": round(o.planned_mm, 3),
                            "expected_mm": round(o.expected_mm, 3),
                            "extra_passes_needed": o.extra_passes_needed}
                           for o in outlook.layers],
            }
            sup.record(lambda: sup.records.record_event(run_id, "growth_out_of_authority",
                                                        details))

    async def _on_pass(self, summary: PassSummary, cursor: Cursor) -> None:
        run_id = self.run_id
        assert run_id is not None
        records = self._sup.records
        await records.record_pass(run_id, self._pass_record(summary, cursor))
        state = cursor.to_json()
        await records.checkpoint(run_id, summary.layer, summary.passes_done, state)
        self._checkpointed = (summary.layer, summary.passes_done, state)
        self._sup.fanout.publish({"kind": "pass", **summary.__dict__})

    def checkpoint_extra_passes(self, cursor: Cursor) -> None:
        """Passes an operator added between two pass boundaries survive a crash: the last
        checkpoint is written again with them (a resume restarts from it, not from a cursor
        whose glass has run ahead of its diameter); before the first, the cursor as it is."""
        run_id = self.run_id
        if run_id is None:
            return
        layer, passes_done, state = self._checkpointed or (
            cursor.layer, cursor.passes_done, cursor.to_json())
        state = {**state, "extra_passes": cursor.extra_passes}
        self._checkpointed = (layer, passes_done, state)
        records = self._sup.records
        self._sup.record(lambda: records.checkpoint(run_id, layer, passes_done, state))

    def _pass_record(self, summary: PassSummary, cursor: Cursor) -> PassRecord:
        """The pass as the run report needs it: what the loop did, and what the plan asked
        of the pass's layer (so the report reads neither the recipe nor the line)."""
        wall_to_epoch = time.time() - time.monotonic()
        layer, planned_inner = self._planned_layer(cursor.step, summary.layer)
        return PassRecord(
            layer=summary.layer, pass_index=summary.passes_done,
            diameter_mm=summary.diameter_mm, deposited_g=summary.deposited_g,
            duration_s=summary.duration_s, started_at=summary.started_wall + wall_to_epoch,
            ended_at=summary.ended_wall + wall_to_epoch,
            step=cursor.step, layer_name=summary.layer_name, layer_pass=summary.pass_index,
            planned_passes=None if layer is None else layer.passes,
            extra_passes=cursor.extra_for(summary.layer),
            diameter_source=summary.diameter_source,
            planned_boundary_mm=summary.planned_boundary_mm, planned_inner_mm=planned_inner,
            start_diameter_mm=cursor.start_diameter_mm,
            sicl4_g_min=summary.sicl4_g_min, sicl4_scale=summary.sicl4_scale,
            dopant_slpm=summary.dopant_slpm,
            planned_dopant_slpm=None if layer is None else layer.dopant_slpm,
            traverse_mm_min=summary.traverse_mm_min,
            planned_traverse_mm_min=None if layer is None else layer.traverse_mm_min,
            efficiency=summary.efficiency, wanted_factor=summary.wanted_factor,
            limited=summary.limited, composition_error_pct=summary.composition_error_pct)

    def _planned_layer(self, step: int, index: int) -> tuple[LayerOp | None, float | None]:
        """The plan's layer ``index`` of deposit step ``step``, and the planned boundary under
        it: the layer before's, or the bait rod's diameter, where planning grows from."""
        if self.plan is None:
            return None, None
        inner = self._sup.line.geometry.bait_rod_diameter_mm
        for step_index, op in enumerate(self.plan.steps):
            if not isinstance(op, DepositOp):
                continue
            for layer_index, layer in enumerate(op.layers):
                if (step_index, layer_index) == (step, index):
                    return layer, inner
                inner = layer.target_diameter_mm
        return None, None

    def _on_progress(self, progress: dict[str, Any]) -> None:
        self._sup.fanout.publish({"kind": "progress", **progress})

    def on_transition(self, to_state: State, cause: str | None) -> None:
        """A final state ends the run: its outcome recorded, ``finished`` set."""
        run_id = self.run_id
        if to_state not in FINAL_STATES or run_id is None or run_id == self._ended:
            # Ended once: clearing an abort (Aborted -> Clearing -> Stopped) is the unit's
            # way back to rest, not a second end of the run.
            return
        self._ended = run_id
        outcome = OUTCOME[to_state]
        self.outcome_reason = cause
        self._sup.record(lambda: self._sup.records.end_run(run_id, outcome))
        self.finished.set()
