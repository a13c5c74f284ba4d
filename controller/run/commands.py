"""The operator's commands to the supervisor, an object it holds: start, hold, unhold, stop,
abort, clear, reset (checked by the state machine, recorded durably, then carried out), the
trims, the extra passes an operator adds to a layer, and the restarts after a controller died
(latches reset, cooling rotation).

Moving towards the safe state never waits on a disk (``SAFE_WARD_COMMANDS``). What the commands
need of the supervisor is ``CommandedLine``; the run and the reactions are given explicitly."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from controller.machine.polling import poll_hz
from controller.recipes.plan import DepositOp, Plan
from controller.records.run_records import RecordsUnavailable, RunHeader
from controller.run.current_run import CurrentRun
from controller.run.executor import Cursor, Executor
from controller.run.reactions import Reactions
from controller.run.supervised_line import SupervisedLine
from controller.safety.envelope import Envelope
from controller.safety.interlocks import Reaction, Signals, evaluate
from controller.safety.states import Command, State
from drivers.codecs.servo_map import AlarmCode
from drivers.errors import DeviceError

log = structlog.get_logger(__name__)

# Commands that move the line towards its safe state: never refused for want of a record.
SAFE_WARD_COMMANDS = frozenset({"hold", "stop", "abort", "jog_stop", "cool_rotation"})
# Rule 9: these act at once, like a trip; their record follows and the answer says whether it
# is durable yet. Every other command is acknowledged only once its record is durable.
ACT_FIRST_COMMANDS = frozenset({"stop", "abort", "jog_stop"})
# How long a restart tries to reset the PLC's heartbeat-loss latch (wall seconds).
HEARTBEAT_LATCH_RESET_S = 5.0
RECORD_PENDING = "carried out; its record is not yet durable (records stalled): alarm raised"
OPERATOR_COMMANDS = ("start", "hold", "unhold", "stop", "abort", "reset", "clear")


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
    record_pending: bool = False  # accepted and carried out, its record not yet durable


@dataclass(frozen=True)
class LayerPasses:
    """A layer of the deposit step running, its passes as the run will make them: the
    recipe's, plus what the operator added (at most ``extra_max``, the recipe's extra_passes)."""

    index: int
    label: str
    planned: int
    extra: int
    extra_max: int
    done: int  # passes made in the layer so far

    @property
    def passes(self) -> int:
        return self.planned + self.extra

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.index, "label": self.label, "planned": self.planned,
                "extra": self.extra, "passes": self.passes, "extra_max": self.extra_max,
                "done": self.done}


def layer_passes(executor: Executor | None, index: int | None = None) -> LayerPasses | None:
    """Layer ``index`` of the deposit step running (default: the current layer); None outside
    a deposit step or for an index that is not one of its layers."""
    if executor is None:
        return None
    cursor, steps = executor.cursor, executor.plan.steps
    op = steps[cursor.step] if cursor.step < len(steps) else None
    if not isinstance(op, DepositOp) or cursor.layer >= len(op.layers):
        return None
    index = cursor.layer if index is None else index
    if not 0 <= index < len(op.layers):
        return None
    layer, extra = op.layers[index], cursor.extra_for(index)
    done = (layer.passes + extra if index < cursor.layer
            else cursor.layer_pass if index == cursor.layer else 0)
    return LayerPasses(index, layer.name, layer.passes, extra, layer.extra_passes_max, done)


def add_passes_refusal(executor: Executor | None, state: State, layer: int | None,
                       passes: int) -> str | None:
    """Extra passes go to the current or a later layer of a depositing run (Execute or Held),
    within what the recipe's extra_passes allows that layer, counting what was added before."""
    if executor is None or state not in (State.EXECUTE, State.HELD):
        return f"add_passes applies to a running deposition, not in {state.value}"
    current = layer_passes(executor)
    if current is None:
        return f"add_passes applies during a deposit step, not during {executor.current_op}"
    if passes < 1:
        return f"the passes to add must be at least 1, not {passes}"
    target = current if layer is None else layer_passes(executor, layer)
    if target is None:
        op = executor.plan.steps[executor.cursor.step]
        assert isinstance(op, DepositOp)
        return (f"layer {layer} is not a layer of the deposit step running "
                f"(layers 0 to {len(op.layers) - 1})")
    name = f"layer {target.index} ({target.label})"
    if target.index < current.index or target.done >= target.passes:
        return (f"{name} has made its passes: add them to the current layer "
                f"({current.index}, {current.label}) or a later one")
    if target.extra_max == 0:
        return f"{name}: the recipe allows it no extra passes"
    if target.extra + passes > target.extra_max:
        return (f"{name}: the recipe allows {target.extra_max} extra passes, {target.extra} "
                f"already added; {passes} more would exceed it")
    return None


class CommandedLine(SupervisedLine, Protocol):
    """What the commands need of the supervisor (which holds them): no import of it, so no
    circle."""

    @property
    def records_ok(self) -> bool: ...

    def signals(self) -> Signals: ...
    def start_blockers(self) -> list[str]: ...
    def envelope_now(self) -> Envelope: ...
    def record_setpoint(self, device: str, quantity: str, value: float, source: str) -> None: ...
    async def record_command(self, user: str, command: str, args: dict[str, Any],
                             accepted: bool, reason: str | None) -> None: ...
    def submit_command_record(self, user: str, command: str, args: dict[str, Any],
                              accepted: bool, reason: str | None) -> asyncio.Future[None]: ...
    async def record_written(self, record: asyncio.Future[None]) -> bool: ...
    async def record_settle(self) -> bool: ...
    @property
    def heartbeats(self) -> int: ...


class Commands:
    def __init__(self, sup: CommandedLine, run: CurrentRun, reactions: Reactions) -> None:
        self._sup = sup
        self._run = run
        self._reactions = reactions
        self._log = log.bind(line=sup.line.line)

    async def command(self, command: str, user: str, *, reason: str | None = None,
                      plan: Plan | None = None, header: RunHeader | None = None,
                      cursor: Cursor | None = None, run_id: int | None = None) -> CommandResult:
        """An operator command: checked, recorded durably, then carried out."""
        sup = self._sup
        refusal = self._refusal(command, plan)
        if refusal is None and command in ACT_FIRST_COMMANDS:
            return await self._act_then_record(command, user, reason)
        if refusal is None and command == "clear":
            # Clearing resets the devices' own latches (RF fault, drive alarms) first, so the
            # check of the trip conditions sees the truth; the reset itself is recorded first.
            refusal = await self._clear_latches_then_check(user)
        if not (refusal is None and command == "start"):  # a start is recorded in its run
            refusal = await self._record(command, user, reason, refusal)
        if refusal is not None:
            self._log.warning("command.refused", command=command, user=user, reason=refusal)
            return CommandResult(command, False, refusal, sup.sm.state.value)
        self._log.info("command.accepted", command=command, user=user)
        if command == "start":
            assert plan is not None
            assert header is not None
            await self._run.start(plan, header, cursor, run_id)
        else:
            await self._carry_out(command, user)
        # What the command caused (state changes) is on disk before the answer, if the disk
        # answers in time; if not, the records' own alarm and hold say so.
        await sup.record_settle()
        return CommandResult(command, True, None, sup.sm.state.value)

    async def _act_then_record(self, command: str, user: str,
                               reason: str | None) -> CommandResult:
        """Stop and abort never wait on a disk (rule 9): the record is queued first (so it
        keeps its place before the reaction's), the command carried out, and the answer says
        whether the record is durable yet; until it is, the records' alarm stands."""
        sup = self._sup
        record = sup.submit_command_record(user, command, {"reason": reason}, True, None)
        self._log.info("command.accepted", command=command, user=user)
        await self._carry_out(command, user)
        written = await sup.record_written(record)
        pending = not written or record.exception() is not None
        if pending:
            self._log.error("command.record_pending", command=command, user=user)
            sup.alarms.evaluate("records_unavailable", True, time.time())
        return CommandResult(command, True, RECORD_PENDING if pending else None,
                             sup.sm.state.value, record_pending=pending)

    async def _record(self, command: str, user: str, reason: str | None,
                      refusal: str | None) -> str | None:
        """Record the command durably; the refusal, or a new one if it could not be recorded
        and it does not move towards the safe state."""
        accepted = refusal is None
        try:
            await self._sup.record_command(user, command, {"reason": reason},
                                           accepted, refusal)
        except RecordsUnavailable as exc:
            # Rule 9: no glass made that cannot be accounted for; moving towards the safe
            # state (hold, stop, abort) never waits on a disk.
            self._log.error("command.not_recorded", command=command, error=str(exc))
            if accepted and command not in SAFE_WARD_COMMANDS:
                return f"run records unavailable, not carried out: {exc.detail}"
        return refusal

    async def _carry_out(self, command: str, user: str) -> None:
        """An accepted command other than start."""
        sm = self._sup.sm
        reactions = self._reactions
        if command == "hold":
            await reactions.hold(cause=f"operator {user}")
        elif command == "unhold":
            sm.apply(Command.UNHOLD, cause=f"operator {user}")
            reactions.clear_reignite_failure()
            self._run.launch_executor(resume=True)
        elif command == "stop":
            await reactions.stop(cause=f"operator {user}")
        elif command == "abort":
            await reactions.operator_abort(user)
        elif command == "clear":
            sm.apply(Command.CLEAR, cause=f"operator {user}")
            self._sup.alarms.clear_latches(user, time.time())
            reactions.clear()
            sm.complete(cause="latches cleared")
        elif command == "reset":
            sm.apply(Command.RESET, cause=f"operator {user}")
            sm.complete(cause="reset")

    async def _clear_latches_then_check(self, user: str) -> str | None:
        """Reset the devices' latches (recorded before they are touched), wait for fresh
        readings, then refuse the clear while a trip condition persists."""
        sup = self._sup
        await sup.record_command(user, "reset_latches", {"for": "clear"},
                                 accepted=True, reason=None)
        source = f"clear:{user}"
        resets = [sup.act.reset_rf_fault(source)]
        resets += [sup.act.reset_axis_alarm(name, source)
                   for name, status in sup.telemetry.axes.items() if status.alarm]
        io = sup.telemetry.safety
        if io is not None and io.heartbeat_latched:
            # The PLC takes the reset only while our beats arrive, and after a lost link the
            # first beat goes with the cycle after the first good read: wait for beats, unless
            # they were stopped (the last resort), when none can come before this clear.
            resets.append(self._reset_heartbeat_latch(source)
                          if self._reactions.heartbeat_enabled
                          else sup.act.reset_heartbeat_latch(source))
        await asyncio.gather(*resets, return_exceptions=True)
        await asyncio.sleep(3 / min(poll_hz(sup.line, "rf"), poll_hz(sup.line, "carriage")))
        active = [i.id for i in evaluate(sup.signals(), sup.line)
                  if i.reaction is not Reaction.ALARM]
        if active:
            return "cannot clear while trip conditions persist: " + ", ".join(active)
        return None

    def _refusal(self, command: str, plan: Plan | None) -> str | None:
        sup = self._sup
        if command not in OPERATOR_COMMANDS:
            return f"{command!r} is not an operator command"
        if not sup.records_ok and command not in SAFE_WARD_COMMANDS:
            return "run records unavailable: only hold, stop and abort are accepted"
        if self._reactions.busy and command != "abort":
            return "a safety reaction is in progress; wait for it to finish"
        refused = sup.sm.can(command)
        if refused is not None:
            return refused.reason
        if command == "start" and plan is None:
            return "start needs a validated recipe"
        blockers = sup.start_blockers() if command in ("start", "unhold") else []
        if command == "unhold":
            blockers = [b for b in blockers if not b.startswith("alarm")]
        if blockers:
            return "interlocks not healthy: " + "; ".join(blockers)
        return None

    # -- trims -----------------------------------------------------------------------------
    def trim_refusal(self, power_kw: float | None, traverse_pct: float | None) -> str | None:
        """Trims apply to a depositing run, within the bounds its current layer declares."""
        executor = self._run.executor
        state = self._sup.sm.state
        if executor is None or state not in (State.EXECUTE, State.HELD):
            return f"trim applies to a running deposition, not in {state.value}"
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
        executor = self._run.executor
        if executor is None:
            return
        sup = self._sup
        if power_kw is not None:
            executor.set_trim(power_kw=power_kw)
            sup.record_setpoint("rf", "power_trim_kw", power_kw, f"trim:{user}")
            layer = executor.current_layer()
            if layer is not None and sup.sm.state is State.EXECUTE:
                await sup.act.set_power_kw(executor.layer_power(layer), f"trim:{user}")
        if traverse_pct is not None:
            executor.set_trim(traverse_pct=traverse_pct)
            sup.record_setpoint("carriage", "traverse_trim_pct", traverse_pct, f"trim:{user}")

    # -- extra passes ------------------------------------------------------------------------
    def layer_passes(self) -> LayerPasses | None:
        """The current layer's passes (planned and extra), while a deposit step runs."""
        return layer_passes(self._run.executor)

    def add_passes_refusal(self, layer: int | None, passes: int) -> str | None:
        return add_passes_refusal(self._run.executor, self._sup.sm.state, layer, passes)

    def add_passes(self, layer: int | None, passes: int, user: str) -> LayerPasses:
        """The operator's extra passes for a layer (default: the current one), once
        ``add_passes_refusal`` has none: the executor runs them from the layer's next pass
        (the drive is told at its next reversal; the cursor keeps them for a resume), and the
        layer's extra passes are recorded like a setpoint, with who added them."""
        executor = self._run.executor
        target = layer_passes(executor, layer)
        assert executor is not None, "checked by add_passes_refusal"
        assert target is not None, "checked by add_passes_refusal"
        executor.add_passes(target.index, passes)
        self._run.checkpoint_extra_passes(executor.cursor)
        added = layer_passes(executor, target.index)
        assert added is not None
        self._sup.record_setpoint("carriage", f"extra_passes_layer_{added.index}",
                                  added.extra, f"add_passes:{user}")
        self._log.info("command.add_passes", user=user, layer=added.index, passes=passes,
                       extra=added.extra, of_max=added.extra_max)
        return added

    # -- after a restart -------------------------------------------------------------------
    async def reset_controller_loss(self, user: str) -> list[str]:
        """After a controller died, the hardware latched what it did alone: the PLC's
        heartbeat loss, each drive's communication-watchdog alarm. Restarting needs a
        recorded command (rule 11): the operator's ``povd run`` / ``povd serve`` is it, and
        the resets are recorded before they are written. Returns what was reset."""
        sup = self._sup
        io = sup.telemetry.safety
        axes = [name for name, status in sup.telemetry.axes.items()
                if status.alarm and status.alarm_code == AlarmCode.COMM_WATCHDOG]
        latched = io is not None and io.heartbeat_latched
        if not axes and not latched:
            return []
        what = [*axes, *(["heartbeat_latch"] if latched else [])]
        await sup.record_command(user, "reset_after_controller_loss", {"reset": what},
                                 accepted=True, reason=None)
        source = f"restart:{user}"
        resets = [sup.act.reset_axis_alarm(axis, source) for axis in axes]
        await asyncio.gather(*resets, return_exceptions=True)
        if latched:
            await self._reset_heartbeat_latch(source)
        await asyncio.sleep(3 / poll_hz(sup.line, "carriage"))  # fresh readings
        return what

    async def _reset_heartbeat_latch(self, source: str) -> None:
        """The PLC accepts the reset only while our beats arrive: wait for a few first, then
        reset until a fresh reading shows the latch gone (bounded; the start blockers say so
        if it stays)."""
        sup = self._sup
        beats, deadline = sup.heartbeats, time.monotonic() + HEARTBEAT_LATCH_RESET_S
        while sup.heartbeats < beats + 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        while time.monotonic() < deadline:
            with contextlib.suppress(DeviceError):
                await sup.act.reset_heartbeat_latch(source)
            await asyncio.sleep(3 / poll_hz(sup.line, "safety_io"))
            io = sup.telemetry.safety
            if io is not None and not io.heartbeat_latched:
                return
        self._log.error("restart.heartbeat_latch_stays")

    async def restart_cooling_rotation(self, user: str) -> float:
        """Turn a hot rod at its cooling speed again, by command (after an E-stop reset the
        drives have power again but nothing restarts by itself); CoolingRotationRefused with
        the reason when there is nothing to do or it cannot be done now."""
        env = self._sup.envelope_now()
        if not env.rod_hot:
            raise CoolingRotationRefused("the rod has cooled: no cooling rotation is needed")
        if env.spindle_min_rpm <= 0:
            raise CoolingRotationRefused(
                "the spindle cannot turn now: " + env.reasons.get("spindle", "no power"))
        source = f"cool_rotation:{user}"
        await self._sup.act.enable_axis("spindle", source)
        await self._sup.act.spindle_rpm(env.spindle_min_rpm, source)
        return env.spindle_min_rpm
