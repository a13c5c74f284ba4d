"""The permission table: decisions the module documents, and refusals that say why."""

from __future__ import annotations

import pytest

from controller.service.roles import (
    PERMISSIONS,
    READ_ACTIONS,
    SERVICE_COMMANDS,
    Role,
    allowed_roles,
    refusal,
)

CASES = [(role, command) for command in sorted(PERMISSIONS) for role in Role]


@pytest.mark.parametrize(("role", "command"), CASES)
def test_refusal_follows_the_table(role: Role, command: str) -> None:
    why = refusal(role, command)
    if role in PERMISSIONS[command]:
        assert why is None
    else:
        assert why is not None
        assert why.startswith(f"role {role.value} may not {command} (needs ")
        # The reason names every role that would have been allowed.
        for allowed in PERMISSIONS[command]:
            assert allowed.value in why


def test_refusal_message_reads_naturally() -> None:
    assert refusal(Role.VIEWER, "hold") == "role viewer may not hold (needs operator or engineer)"
    assert refusal(Role.OPERATOR, "jog") == "role operator may not jog (needs maintenance)"


def test_unknown_command_is_refused_for_everyone() -> None:
    for role in Role:
        assert refusal(role, "launch_missiles") == "unknown command 'launch_missiles'"
    assert allowed_roles("launch_missiles") == frozenset()


@pytest.mark.parametrize("command", ["stop", "abort", "jog_stop"])
def test_anyone_at_the_machine_may_stop_it(command: str) -> None:
    assert {Role.OPERATOR, Role.ENGINEER, Role.MAINTENANCE} <= PERMISSIONS[command]


def test_engineer_may_do_every_run_command_of_an_operator() -> None:
    for command, roles in PERMISSIONS.items():
        if Role.OPERATOR in roles:
            assert Role.ENGINEER in roles, command


def test_maintenance_may_read_everything_a_viewer_may() -> None:
    for command, roles in PERMISSIONS.items():
        if Role.VIEWER in roles:
            assert Role.MAINTENANCE in roles, command


def test_viewer_and_admin_change_nothing_on_the_machine() -> None:
    for command in SERVICE_COMMANDS - {"config"}:
        assert Role.VIEWER not in PERMISSIONS[command], command
        assert Role.ADMIN not in PERMISSIONS[command], command


def test_service_commands_exclude_reads_and_local_actions() -> None:
    assert not READ_ACTIONS & SERVICE_COMMANDS
    assert "users" not in SERVICE_COMMANDS
    assert {"start", "hold", "jog", "jog_stop", "device_test", "trim"} <= SERVICE_COMMANDS
