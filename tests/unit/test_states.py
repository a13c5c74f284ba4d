"""The PackML state machine, tested from its own table: every (state, command) pair either
moves to the table's target or is refused with a human reason."""

from __future__ import annotations

import itertools

import pytest

from controller.safety.states import (
    ACTING_STATES,
    ACTIVE_STATES,
    INTERNAL_EVENTS,
    MODE_CHANGE_STATES,
    OPERATOR_COMMANDS,
    STATE_COMPLETE_TARGETS,
    TRANSITIONS,
    WAIT_STATES,
    Command,
    CommandRefused,
    Mode,
    State,
    StateMachine,
    Transition,
)

ALL_PAIRS = list(itertools.product(State, Command))


def _clock() -> float:
    return 1000.0


@pytest.mark.parametrize(("state", "command"), ALL_PAIRS, ids=str)
def test_every_pair_transitions_or_is_refused_with_a_reason(state: State, command: Command) -> None:
    sm = StateMachine(state, clock=_clock)
    target = TRANSITIONS.get((state, command))
    if target is None:
        refusal = sm.can(command)
        assert refusal is not None
        assert refusal.reason.startswith(f"{command.value} is not allowed in {state.value}: ")
        assert len(refusal.reason.split(": ", 1)[1]) > 5
        with pytest.raises(CommandRefused) as info:
            sm.apply(command)
        assert info.value.command == command.value
        assert info.value.state is state
        assert info.value.reason == refusal.reason
        assert sm.state is state
        assert sm.history == ()
    else:
        assert sm.can(command) is None
        transition = sm.apply(command, cause="test")
        assert transition == Transition(1, command, state, target, Mode.PRODUCTION, 1000.0, "test")
        assert sm.state is target
        assert sm.history == (transition,)


def test_the_table_follows_packml() -> None:
    expected_state_complete = {
        State.STARTING: State.EXECUTE,
        State.EXECUTE: State.COMPLETING,
        State.COMPLETING: State.COMPLETE,
        State.RESETTING: State.IDLE,
        State.HOLDING: State.HELD,
        State.UNHOLDING: State.EXECUTE,
        State.SUSPENDING: State.SUSPENDED,
        State.UNSUSPENDING: State.EXECUTE,
        State.STOPPING: State.STOPPED,
        State.ABORTING: State.ABORTED,
        State.CLEARING: State.STOPPED,
    }
    assert dict(STATE_COMPLETE_TARGETS) == expected_state_complete
    no_stop = {State.STOPPED, State.STOPPING, State.ABORTING, State.ABORTED, State.CLEARING}
    for state in State:
        assert ((state, Command.STOP) in TRANSITIONS) == (state not in no_stop)
        assert ((state, Command.ABORT) in TRANSITIONS) == (
            state not in {State.ABORTING, State.ABORTED}
        )
    assert TRANSITIONS[(State.IDLE, Command.START)] is State.STARTING
    assert TRANSITIONS[(State.EXECUTE, Command.HOLD)] is State.HOLDING
    assert TRANSITIONS[(State.SUSPENDED, Command.HOLD)] is State.HOLDING
    assert TRANSITIONS[(State.HELD, Command.UNHOLD)] is State.UNHOLDING
    assert TRANSITIONS[(State.EXECUTE, Command.SUSPEND)] is State.SUSPENDING
    assert TRANSITIONS[(State.SUSPENDED, Command.UNSUSPEND)] is State.UNSUSPENDING
    assert TRANSITIONS[(State.COMPLETE, Command.RESET)] is State.RESETTING
    assert TRANSITIONS[(State.STOPPED, Command.RESET)] is State.RESETTING
    assert TRANSITIONS[(State.ABORTED, Command.CLEAR)] is State.CLEARING
    # Aborted is left only by an explicit clear (or nothing at all).
    assert [c for (s, c) in TRANSITIONS if s is State.ABORTED] == [Command.CLEAR]


def test_state_sets_are_consistent() -> None:
    assert ACTING_STATES | WAIT_STATES | {State.EXECUTE} == set(State)
    assert not ACTING_STATES & WAIT_STATES
    assert State.EXECUTE in ACTIVE_STATES
    assert not ACTIVE_STATES & {State.IDLE, State.STOPPED, State.ABORTED, State.COMPLETE}
    assert {State.IDLE, State.STOPPED, State.ABORTED} == MODE_CHANGE_STATES
    assert set(Command) == OPERATOR_COMMANDS | INTERNAL_EVENTS
    assert not OPERATOR_COMMANDS & INTERNAL_EVENTS


def _reason(state: State, command: str) -> str:
    refusal = StateMachine(state).can(command)
    assert refusal is not None
    return refusal.reason


def test_reasons_read_like_sentences() -> None:
    assert _reason(State.IDLE, "hold") == "hold is not allowed in Idle: no run is executing"
    assert _reason(State.EXECUTE, "start") == (
        "start is not allowed in Execute: a run is already active"
    )
    assert _reason(State.HOLDING, "unhold") == (
        "unhold is not allowed in Holding: the unit is busy holding; wait until it finishes"
    )
    assert _reason(State.ABORTED, "reset") == (
        "reset is not allowed in Aborted: the unit is aborted (clear it, then reset)"
    )
    assert _reason(State.STOPPED, "stop") == (
        "stop is not allowed in Stopped: the unit is already stopping, stopped or aborting"
    )


def test_unknown_command_is_refused() -> None:
    sm = StateMachine()
    refusal = sm.can("launch")
    assert refusal is not None
    assert refusal.command == "launch"
    assert "not a known command" in refusal.reason
    with pytest.raises(CommandRefused):
        sm.apply("launch")


def test_a_whole_run_with_a_flame_out_and_a_hold() -> None:
    sm = StateMachine()
    seen: list[Transition] = []
    sm.add_listener(seen.append)
    sm.apply("start")
    sm.complete()
    sm.apply(Command.SUSPEND, cause="flame-out")
    sm.complete()
    sm.apply(Command.UNSUSPEND)
    sm.apply(Command.SUSPEND, cause="flame-out while resuming")
    sm.complete()
    sm.apply("hold")
    sm.complete()
    sm.apply("unhold")
    sm.complete()
    sm.complete(cause="recipe ended")
    sm.complete()
    assert sm.state is State.COMPLETE
    sm.apply("reset")
    sm.complete()
    assert sm.state in {State.IDLE}
    assert [t.to_state for t in seen] == [
        State.STARTING,
        State.EXECUTE,
        State.SUSPENDING,
        State.SUSPENDED,
        State.UNSUSPENDING,
        State.SUSPENDING,
        State.SUSPENDED,
        State.HOLDING,
        State.HELD,
        State.UNHOLDING,
        State.EXECUTE,
        State.COMPLETING,
        State.COMPLETE,
        State.RESETTING,
        State.IDLE,
    ]
    assert [t.seq for t in sm.history] == list(range(1, 16))
    assert sm.history[2].cause == "flame-out"


def test_abort_then_clear_path() -> None:
    sm = StateMachine(State.EXECUTE)
    sm.apply("abort", cause="water flow low")
    assert sm.run_active
    sm.complete()
    assert sm.state is State.ABORTED
    assert not sm.run_active
    assert sm.can("reset") is not None
    sm.apply("clear")
    sm.complete()
    assert sm.state is State.STOPPED
    sm.apply("reset")
    sm.complete()
    assert sm.state is State.IDLE


def test_a_failing_listener_does_not_stop_the_others() -> None:
    sm = StateMachine()
    seen: list[State] = []

    def broken(_: Transition) -> None:
        raise RuntimeError("boom")

    sm.add_listener(broken)
    remove = sm.add_listener(lambda t: seen.append(t.to_state))
    sm.apply("start")
    assert seen == [State.STARTING]
    remove()
    sm.complete()
    assert seen == [State.STARTING]
    assert sm.state is State.EXECUTE


@pytest.mark.parametrize("state", list(State), ids=str)
def test_mode_changes_only_in_idle_stopped_aborted(state: State) -> None:
    sm = StateMachine(state)
    refusal = sm.can_change_mode(Mode.MAINTENANCE)
    if state in MODE_CHANGE_STATES:
        assert refusal is None
        change = sm.set_mode("maintenance", user="alice")
        assert (change.from_mode, change.to_mode, change.user) == (
            Mode.PRODUCTION,
            Mode.MAINTENANCE,
            "alice",
        )
        assert sm.mode is Mode.MAINTENANCE
        assert sm.mode_history == (change,)
    else:
        assert refusal is not None
        assert refusal.reason.startswith(f"mode change is not allowed in {state.value}")
        with pytest.raises(CommandRefused):
            sm.set_mode(Mode.MAINTENANCE)
        assert sm.mode is Mode.PRODUCTION


def test_maintenance_mode_refuses_a_run_and_allows_maintenance_only_when_idle() -> None:
    sm = StateMachine()
    assert sm.can_maintain() is not None  # production mode
    sm.set_mode(Mode.MAINTENANCE)
    assert sm.can_maintain() is None
    refusal = sm.can("start")
    assert refusal is not None
    assert refusal.reason == "start is not allowed in maintenance mode: switch to production"
    for state in ACTIVE_STATES | ACTING_STATES:
        busy = StateMachine(state, Mode.MAINTENANCE)
        assert busy.can_maintain() is not None
    for state in (State.IDLE, State.STOPPED, State.ABORTED, State.COMPLETE):
        assert StateMachine(state, Mode.MAINTENANCE).can_maintain() is None
