"""Roles and what each may do: the permission table as data, checked on the server side.

The table is data (style.md principle 6) so the API, the MQTT bridge and the tests all read the
same thing, and every refusal says which roles would have been allowed.

Decisions (least privilege, but practical on a line):
- operator: runs a recipe and looks after it (start, hold, unhold, reset, clear, retry,
  acknowledge and shelve alarms, trim within the recipe's bounds, add the extra passes a
  recipe allows a layer).
- engineer: everything an operator may do with a run (an engineer commissioning a recipe runs
  it), plus recipe editing and the line configuration. Engineers do not jog or test devices:
  that is maintenance work, done in maintenance mode by the people trained for it.
- maintenance: maintenance mode, jogging, homing, moves, device tests, and reads (maintenance is
  a superset of viewer). Maintenance staff do not run recipes.
- viewer: reads only (status, alarms, events, runs) and may validate a recipe, which changes
  nothing.
- admin: the line PC's administrator: users and configuration only. An administrator is not
  at the machine as an operator, so holds no run or motion command.
- stop, abort and jog_stop are allowed to anyone who may operate or maintain the machine
  (operator, engineer, maintenance): whoever stands at the machine may always stop it. Stopping
  only ever moves the line towards its safe state, so widening it costs nothing in safety.
  Viewers and administrators may not: a viewer is often a screen elsewhere in the plant.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Role(StrEnum):
    OPERATOR = "operator"
    MAINTENANCE = "maintenance"
    ENGINEER = "engineer"
    VIEWER = "viewer"
    ADMIN = "admin"


_RUN = frozenset({Role.OPERATOR, Role.ENGINEER})
_STOPPERS = frozenset({Role.OPERATOR, Role.ENGINEER, Role.MAINTENANCE})
_MAINTAIN = frozenset({Role.MAINTENANCE})
_EVERYONE = frozenset(Role)

# Command (or read action) name -> the roles allowed to do it.
PERMISSIONS: Mapping[str, frozenset[Role]] = {
    # A run and its alarms.
    "start": _RUN,
    "hold": _RUN,
    "unhold": _RUN,
    "reset": _RUN,
    "clear": _RUN,
    "retry": _RUN,  # re-ignite after failed attempts left the run Suspended
    "ack": _RUN,
    "shelve": _RUN,
    "trim": _RUN,
    "add_passes": _RUN,  # a layer's extra passes, within the recipe's extra_passes
    "purge": _RUN,  # after a trip that forbade purging, once the exhaust and scrubber are back
    # Anyone at the machine may stop it (see the module docstring).
    "stop": _STOPPERS,
    "abort": _STOPPERS,
    "jog_stop": _STOPPERS,
    # Turning a hot rod again after an E-stop (rule 1): a safe-ward action, never automatic.
    "cool_rotation": _STOPPERS,
    # Maintenance.
    "mode": _MAINTAIN,
    "jog": _MAINTAIN,
    "home": _MAINTAIN,
    "move": _MAINTAIN,
    "device_test": _MAINTAIN,
    # Engineering and administration.
    "recipe_edit": frozenset({Role.ENGINEER}),
    "config": frozenset({Role.ENGINEER, Role.ADMIN}),
    "users": frozenset({Role.ADMIN}),
    # Reads: nothing changes.
    "validate": _EVERYONE,
    "status": _EVERYONE,
    "read": _EVERYONE,
}

# Names in PERMISSIONS that are reads served by their own endpoints, not commands the service
# executes; `users` is done on the line PC with `povd users`, never through the service.
READ_ACTIONS = frozenset({"validate", "status", "read"})
LOCAL_ACTIONS = frozenset({"users"})
SERVICE_COMMANDS = frozenset(PERMISSIONS) - READ_ACTIONS - LOCAL_ACTIONS


def allowed_roles(command: str) -> frozenset[Role]:
    """The roles allowed to do `command` (empty for an unknown command: deny by default)."""
    return PERMISSIONS.get(command, frozenset())


def refusal(role: Role, command: str) -> str | None:
    """None if `role` may do `command`, else the reason, naming the roles that may."""
    allowed = PERMISSIONS.get(command)
    if allowed is None:
        return f"unknown command {command!r}"
    if role in allowed:
        return None
    # In the enum's order, so the message is stable.
    names = [r.value for r in Role if r in allowed]
    needs = names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" or {names[-1]}"
    return f"role {role.value} may not {command} (needs {needs})"
