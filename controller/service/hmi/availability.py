"""Which commands the screen offers the logged-in user now, and why the others are not:
the role table's refusal first, then the state machine's, in the service's own words (the
same functions make the service's refusals). The service still decides: a button enabled here
can be refused (an interlock, a trim out of bounds), and its reply is shown."""

from __future__ import annotations

from controller.safety.states import Mode, Refusal, State, StateMachine
from controller.service.roles import Role, refusal

RUN_COMMANDS = ("start", "hold", "unhold", "stop", "abort", "reset", "clear")
MAINTENANCE_COMMANDS = ("jog", "home", "move", "device_test")
# Refused or not by what the command carries (an alarm, a bound, an axis), not by the state.
CARRIED = ("ack", "shelve", "trim", "jog_stop")
OFFERED = (*RUN_COMMANDS, "mode", *MAINTENANCE_COMMANDS, *CARRIED)


def _state_refusal(machine: StateMachine, command: str) -> Refusal | None:
    if command in RUN_COMMANDS:
        return machine.can(command)
    if command == "mode":
        other = Mode.PRODUCTION if machine.mode is Mode.MAINTENANCE else Mode.MAINTENANCE
        return machine.can_change_mode(other)
    if command in MAINTENANCE_COMMANDS:
        return machine.can_maintain()
    return None


def command_refusals(role: Role, state: str, mode: str,
                     maintenance_refusal: str | None = None) -> dict[str, str | None]:
    """Each offered command -> None (offered) or the reason it is not. ``maintenance_refusal``
    is the line's own reason to refuse motion and device tests now (an open E-stop chain, a
    silent safety I/O), from the status; it comes after the role's and the state's."""
    machine = StateMachine(State(state), Mode(mode))
    refusals: dict[str, str | None] = {}
    for command in OFFERED:
        why = refusal(role, command)
        if why is None:
            state_refusal = _state_refusal(machine, command)
            why = None if state_refusal is None else state_refusal.reason
        if why is None and command in MAINTENANCE_COMMANDS:
            why = maintenance_refusal
        refusals[command] = why
    return refusals
