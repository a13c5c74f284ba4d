"""The PackML (ISA-TR88.00.02) unit state machine, with its transition table as data.

The table below is the single source of truth: `StateMachine` only looks things up in it, the
refusal reasons are derived from it, and the unit tests are generated from it. The machine is pure
(no I/O, no asyncio): the supervisor applies commands, records them, and drives the acting states
to completion by calling `complete()` once their work is done.

Deviations from / choices within PackML, on purpose:
- `hold` is accepted in Suspended as well as Execute (PackML allows it): an operator may hold a
  run that is waiting for the plasma to come back.
- `suspend` is accepted in Unsuspending too: the plasma can be lost again while the run resumes,
  and the only safe place to go is back to Suspended (domain rule 2).
- Mode changes (production <-> maintenance) are accepted only in Idle, Stopped and Aborted, the
  states in which nothing moves on the machine's own initiative.
- A production run (`start`) is refused in maintenance mode; maintenance actions (jog, device
  tests) are refused while a run is active or the unit is acting (domain rule 6).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import structlog

log = structlog.get_logger(__name__)


class State(StrEnum):
    IDLE = "Idle"
    STARTING = "Starting"
    EXECUTE = "Execute"
    COMPLETING = "Completing"
    COMPLETE = "Complete"
    RESETTING = "Resetting"
    HOLDING = "Holding"
    HELD = "Held"
    UNHOLDING = "Unholding"
    SUSPENDING = "Suspending"
    SUSPENDED = "Suspended"
    UNSUSPENDING = "Unsuspending"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    ABORTING = "Aborting"
    ABORTED = "Aborted"
    CLEARING = "Clearing"


class Command(StrEnum):
    START = "start"
    HOLD = "hold"
    UNHOLD = "unhold"
    STOP = "stop"
    ABORT = "abort"
    RESET = "reset"
    CLEAR = "clear"
    # Internal events: raised by the controller itself, never accepted from an operator.
    STATE_COMPLETE = "state_complete"
    SUSPEND = "suspend"
    UNSUSPEND = "unsuspend"


class Mode(StrEnum):
    PRODUCTION = "production"
    MAINTENANCE = "maintenance"


S = State
C = Command

OPERATOR_COMMANDS: frozenset[Command] = frozenset(
    {C.START, C.HOLD, C.UNHOLD, C.STOP, C.ABORT, C.RESET, C.CLEAR}
)
INTERNAL_EVENTS: frozenset[Command] = frozenset({C.STATE_COMPLETE, C.SUSPEND, C.UNSUSPEND})

# "State complete": where each acting state goes once its work is done. Execute is PackML's dual
# state: its completion is the recipe's end.
STATE_COMPLETE_TARGETS: Mapping[State, State] = {
    S.STARTING: S.EXECUTE,
    S.EXECUTE: S.COMPLETING,
    S.COMPLETING: S.COMPLETE,
    S.RESETTING: S.IDLE,
    S.HOLDING: S.HELD,
    S.UNHOLDING: S.EXECUTE,
    S.SUSPENDING: S.SUSPENDED,
    S.UNSUSPENDING: S.EXECUTE,
    S.STOPPING: S.STOPPED,
    S.ABORTING: S.ABORTED,
    S.CLEARING: S.STOPPED,
}

_NO_STOP: frozenset[State] = frozenset({S.STOPPED, S.STOPPING, S.ABORTING, S.ABORTED, S.CLEARING})
_NO_ABORT: frozenset[State] = frozenset({S.ABORTING, S.ABORTED})


def _build_table() -> dict[tuple[State, Command], State]:
    table: dict[tuple[State, Command], State] = {
        (S.IDLE, C.START): S.STARTING,
        (S.EXECUTE, C.HOLD): S.HOLDING,
        (S.SUSPENDED, C.HOLD): S.HOLDING,
        (S.HELD, C.UNHOLD): S.UNHOLDING,
        (S.EXECUTE, C.SUSPEND): S.SUSPENDING,
        (S.UNSUSPENDING, C.SUSPEND): S.SUSPENDING,
        (S.SUSPENDED, C.UNSUSPEND): S.UNSUSPENDING,
        (S.COMPLETE, C.RESET): S.RESETTING,
        (S.STOPPED, C.RESET): S.RESETTING,
        (S.ABORTED, C.CLEAR): S.CLEARING,
    }
    for state, target in STATE_COMPLETE_TARGETS.items():
        table[(state, C.STATE_COMPLETE)] = target
    for state in State:
        if state not in _NO_STOP:
            table[(state, C.STOP)] = S.STOPPING
        if state not in _NO_ABORT:
            table[(state, C.ABORT)] = S.ABORTING
    return table


TRANSITIONS: Mapping[tuple[State, Command], State] = _build_table()

ACTING_STATES: frozenset[State] = frozenset(STATE_COMPLETE_TARGETS) - {S.EXECUTE}
WAIT_STATES: frozenset[State] = frozenset(
    {S.IDLE, S.HELD, S.SUSPENDED, S.COMPLETE, S.STOPPED, S.ABORTED}
)
# A run is active: the rod may be hot or coated, and deposition has started or is winding down.
ACTIVE_STATES: frozenset[State] = frozenset(
    {
        S.STARTING,
        S.EXECUTE,
        S.COMPLETING,
        S.HOLDING,
        S.HELD,
        S.UNHOLDING,
        S.SUSPENDING,
        S.SUSPENDED,
        S.UNSUSPENDING,
        S.STOPPING,
        S.ABORTING,
    }
)
MODE_CHANGE_STATES: frozenset[State] = frozenset({S.IDLE, S.STOPPED, S.ABORTED})
# Commands that need production mode (a recipe run).
PRODUCTION_ONLY: frozenset[Command] = frozenset({C.START})


# Why a command that is not in the table is refused, by command (a fallback per state below).
_WHY_NOT: Mapping[Command, str] = {
    C.START: "a run can start only from Idle",
    C.HOLD: "hold applies only to an executing or suspended run",
    C.UNHOLD: "only a held run can be unheld",
    C.STOP: "the unit is already stopping, stopped or aborting",
    C.ABORT: "the unit is already aborting or aborted",
    C.RESET: "reset applies only in Complete or Stopped",
    C.CLEAR: "clear applies only in Aborted",
    C.STATE_COMPLETE: "the state has no work to complete",
    C.SUSPEND: "only an executing run can be suspended",
    C.UNSUSPEND: "only a suspended run can be resumed",
}

_WHY_STATE: Mapping[State, str] = {
    S.IDLE: "no run is executing",
    S.STOPPED: "the unit is stopped (reset it to return to Idle)",
    S.ABORTED: "the unit is aborted (clear it, then reset)",
    S.COMPLETE: "the run is complete (reset it to return to Idle)",
}
# Commands whose own reason says more than the state's.
_COMMAND_FIRST: frozenset[Command] = frozenset({C.STOP, C.ABORT, C.CLEAR, C.STATE_COMPLETE})


def refusal_reason(state: State, command: Command) -> str:
    """The human reason a command is refused in a state (the pair is not in the table)."""
    if command is C.START and state in ACTIVE_STATES:
        why = "a run is already active"
    elif command is C.HOLD and state in (S.HOLDING, S.HELD):
        why = "the run is already held"
    elif command in _COMMAND_FIRST:
        why = _WHY_NOT[command]
    elif state in ACTING_STATES:
        why = f"the unit is busy {state.value.lower()}; wait until it finishes"
    else:
        why = _WHY_STATE.get(state, _WHY_NOT[command])
    return f"{command.value} is not allowed in {state.value}: {why}"


@dataclass(frozen=True, slots=True)
class Refusal:
    command: str
    state: State
    mode: Mode
    reason: str


@dataclass(frozen=True, slots=True)
class Transition:
    seq: int
    command: Command
    from_state: State
    to_state: State
    mode: Mode
    at: float
    cause: str | None = None


@dataclass(frozen=True, slots=True)
class ModeChange:
    from_mode: Mode
    to_mode: Mode
    state: State
    at: float
    user: str | None = None


# The name is the supervisor's vocabulary (a refusal, not an error in the software).
class CommandRefused(Exception):
    """A command (or mode change) that is not allowed now; carries the refusal's reason."""

    def __init__(self, command: str, state: State, reason: str) -> None:
        super().__init__(reason)
        self.command = command
        self.state = state
        self.reason = reason


TransitionListener = Callable[[Transition], None]


class StateMachine:
    """The unit's current state and mode, the table's interpreter, and a history."""

    def __init__(
        self,
        state: State = S.IDLE,
        mode: Mode = Mode.PRODUCTION,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = state
        self._mode = mode
        self._clock = clock
        self._history: list[Transition] = []
        self._mode_history: list[ModeChange] = []
        self._listeners: list[TransitionListener] = []

    @property
    def state(self) -> State:
        return self._state

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def history(self) -> tuple[Transition, ...]:
        return tuple(self._history)

    @property
    def mode_history(self) -> tuple[ModeChange, ...]:
        return tuple(self._mode_history)

    @property
    def run_active(self) -> bool:
        return self._state in ACTIVE_STATES

    def add_listener(self, listener: TransitionListener) -> Callable[[], None]:
        """Call `listener` after every transition; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def can(self, command: Command | str) -> Refusal | None:
        """None if `command` is allowed now, else the refusal with its reason."""
        try:
            cmd = Command(command)
        except ValueError:
            return self._refusal(str(command), f"{command!r} is not a known command")
        if (self._state, cmd) not in TRANSITIONS:
            return self._refusal(cmd.value, refusal_reason(self._state, cmd))
        if cmd in PRODUCTION_ONLY and self._mode is not Mode.PRODUCTION:
            return self._refusal(
                cmd.value,
                f"{cmd.value} is not allowed in {self._mode.value} mode: switch to production",
            )
        return None

    def apply(self, command: Command | str, cause: str | None = None) -> Transition:
        """Take the transition for `command`, or raise `CommandRefused` with the reason."""
        refusal = self.can(command)
        if refusal is not None:
            raise CommandRefused(refusal.command, refusal.state, refusal.reason)
        cmd = Command(command)
        transition = Transition(
            seq=len(self._history) + 1,
            command=cmd,
            from_state=self._state,
            to_state=TRANSITIONS[(self._state, cmd)],
            mode=self._mode,
            at=self._clock(),
            cause=cause,
        )
        self._state = transition.to_state
        self._history.append(transition)
        log.info(
            "state_transition",
            command=cmd.value,
            from_state=transition.from_state.value,
            to_state=transition.to_state.value,
            cause=cause,
        )
        self._notify(transition)
        return transition

    def complete(self, cause: str | None = None) -> Transition:
        """The current acting state (or Execute: the recipe ended) has finished its work."""
        return self.apply(C.STATE_COMPLETE, cause)

    def can_change_mode(self, mode: Mode | str) -> Refusal | None:
        target = Mode(mode)
        if self._state not in MODE_CHANGE_STATES:
            return self._refusal(
                f"mode:{target.value}",
                f"mode change is not allowed in {self._state.value}: "
                "only in Idle, Stopped or Aborted",
            )
        return None

    def set_mode(self, mode: Mode | str, user: str | None = None) -> ModeChange:
        refusal = self.can_change_mode(mode)
        if refusal is not None:
            raise CommandRefused(refusal.command, refusal.state, refusal.reason)
        change = ModeChange(self._mode, Mode(mode), self._state, self._clock(), user)
        self._mode = change.to_mode
        self._mode_history.append(change)
        log.info("mode_change", from_mode=change.from_mode.value, to_mode=change.to_mode.value)
        return change

    def can_maintain(self) -> Refusal | None:
        """Whether maintenance actions (jog, device tests) are allowed by the unit's state and
        mode. The interlocks (E-stop chain, safety relay, doors) are checked elsewhere."""
        if self._mode is not Mode.MAINTENANCE:
            return self._refusal(
                "maintenance", "maintenance actions need maintenance mode: switch modes first"
            )
        if self._state in ACTIVE_STATES or self._state in ACTING_STATES:
            return self._refusal(
                "maintenance",
                f"maintenance actions are not allowed in {self._state.value}: "
                "the unit is busy or a run is active",
            )
        return None

    def _refusal(self, command: str, reason: str) -> Refusal:
        return Refusal(command=command, state=self._state, mode=self._mode, reason=reason)

    def _notify(self, transition: Transition) -> None:
        for listener in list(self._listeners):
            try:
                listener(transition)
            except Exception:
                # The transition has happened; a faulty listener must not hide it from the others.
                log.exception("state_listener_failed", listener=repr(listener))
