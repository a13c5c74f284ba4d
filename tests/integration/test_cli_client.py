"""The `povd` client commands against a real uvicorn server on a free loopback port, and the
line PC's `povd users` / `povd audit` commands on their files."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from controller.cli.admin_commands import (
    add_admin_commands,
    audit_path,
    run_admin_command,
    users_path,
)
from controller.cli.client_commands import add_client_commands, run_client_command
from controller.cli.output import EXIT_ERROR, EXIT_INVALID, EXIT_OK, EXIT_REFUSED
from controller.cli.service_client import (
    DEFAULT_URL,
    ServiceClient,
    load_token,
    resolve_url,
    save_token,
    token_path,
)
from controller.records.audit import AuditTrail
from controller.service.roles import Role
from controller.service.users import UserStore
from tests.integration.test_api import FAST, RECIPES, Clock, FakeService, make_app, password


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="povd")
    sub = p.add_subparsers(dest="command", required=True)
    add_client_commands(sub)
    add_admin_commands(sub)
    return p


@dataclass
class Served:
    url: str
    service: FakeService
    audit: AuditTrail


@pytest.fixture(autouse=True)
def _token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POVD_TOKEN_FILE", str(tmp_path / "config" / "token"))
    monkeypatch.delenv("POVD_URL", raising=False)


@pytest.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    service = FakeService()
    app, audit = make_app(tmp_path / "data", service, Clock())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # a free port, known before the server starts
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False,
                            ws="none", http="h11")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert not task.done(), task
        await asyncio.sleep(0.01)
    monkeypatch.setenv("POVD_URL", url)
    try:
        yield Served(url, service, audit)
    finally:
        server.should_exit = True
        await task
        sock.close()
        audit.close()


async def povd(*argv: str) -> int:
    """Run one client command in a thread: it blocks, the server runs on this loop."""
    args = parser().parse_args(list(argv))
    return await asyncio.to_thread(run_client_command, args)


async def login(role: Role, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr("getpass.getpass", lambda prompt="": password(role))
    return await povd("login", role.value)


# -- sessions --------------------------------------------------------------------------------


async def test_login_status_command_logout(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await login(Role.OPERATOR, monkeypatch) == EXIT_OK
    assert "as operator (operator)" in capsys.readouterr().out
    path = token_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["url"] == served.url

    assert await povd("status") == EXIT_OK
    out = capsys.readouterr().out
    assert "state IDLE, mode production" in out
    assert "A12" in out

    assert await povd("hold", "--reason", "check the torch") == EXIT_OK
    assert "hold: accepted (state IDLE)" in capsys.readouterr().out
    assert served.service.calls[-1] == ("operator", "hold", {"reason": "check the torch"})

    assert await povd("logout") == EXIT_OK
    assert not path.exists()
    assert await povd("status") == EXIT_ERROR
    assert "not logged in" in capsys.readouterr().err
    assert [e.action for e in served.audit.entries()] == ["login", "hold", "logout"]


async def test_wrong_password_is_an_error(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("getpass.getpass", lambda prompt="": "not-it-at-all")
    assert await povd("login", "operator") == EXIT_ERROR
    assert "wrong user name or password" in capsys.readouterr().err
    assert not token_path().exists()


async def test_refusals_exit_3_with_the_reason(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await login(Role.VIEWER, monkeypatch)
    assert await povd("abort") == EXIT_REFUSED
    assert "abort: refused: role viewer may not abort" in capsys.readouterr().out
    await login(Role.OPERATOR, monkeypatch)
    served.service.refuse["unhold"] = "state IDLE: nothing is held"
    assert await povd("unhold") == EXIT_REFUSED
    assert "unhold: refused: state IDLE: nothing is held" in capsys.readouterr().out


async def test_start_sends_the_recipe_text(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await login(Role.OPERATOR, monkeypatch)
    recipe = RECIPES / "smoke-test.yaml"
    assert await povd("start", str(recipe), "--serial", "P-042") == EXIT_OK
    user, command, args = served.service.calls[-1]
    assert (user, command) == ("operator", "start")
    assert args["recipe_text"] == recipe.read_text()
    assert args["preform_serial"] == "P-042"
    assert await povd("start", str(RECIPES / "missing.yaml")) == EXIT_INVALID
    assert "cannot read the recipe" in capsys.readouterr().err


async def test_alarms_mode_trim_home_move(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await login(Role.OPERATOR, monkeypatch)
    capsys.readouterr()
    assert await povd("alarms", "--json") == EXIT_OK
    assert json.loads(capsys.readouterr().out)[0]["id"] == "A12"
    assert await povd("alarms", "ack", "A12") == EXIT_OK
    assert await povd("alarms", "shelve", "A12", "--for", "600", "--reason", "sensor swap") == 0
    assert await povd("trim", "--power-kw", "51.5") == EXIT_OK
    assert await povd("trim") == EXIT_INVALID
    assert [c[1:] for c in served.service.calls] == [
        ("ack", {"alarm_id": "A12"}),
        ("shelve", {"alarm_id": "A12", "for_s": 600.0, "reason": "sensor swap"}),
        ("trim", {"power_kw": 51.5}),
    ]
    await login(Role.MAINTENANCE, monkeypatch)
    assert await povd("mode", "maintenance") == EXIT_OK
    assert await povd("home", "carriage") == EXIT_OK
    assert await povd("move", "carriage", "250", "--speed", "500") == EXIT_OK
    # The move renews its lease until the axis has arrived.
    move = ("move", {"axis": "carriage", "position_mm": 250.0, "speed": 500.0})
    assert [c[1:] for c in served.service.calls[-4:]] == [
        ("mode", {"mode": "maintenance"}),
        ("home", {"axis": "carriage"}),
        move, move,
    ]


async def test_add_passes_sends_the_layer_and_passes_and_status_shows_the_layer(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await login(Role.OPERATOR, monkeypatch)
    assert await povd("add-passes", "--passes", "2") == EXIT_OK
    assert await povd("add-passes", "--layer", "1", "--passes", "3", "--reason", "drift") == 0
    assert [c[1:] for c in served.service.calls] == [
        ("add_passes", {"passes": 2}),
        ("add_passes", {"passes": 3, "layer": 1, "reason": "drift"}),
    ]
    assert await povd("add-passes", "--passes", "0") == EXIT_INVALID
    assert await povd("add-passes", "--layer", "-1", "--passes", "1") == EXIT_INVALID
    assert "--layer counts from 0" in capsys.readouterr().err
    served.service.refuse["add_passes"] = ("layer 0 (inner): the recipe allows 6 extra "
                                           "passes, 4 already added; 3 more would exceed it")
    assert await povd("add-passes", "--passes", "3") == EXIT_REFUSED
    assert ("add_passes: refused: layer 0 (inner): the recipe allows 6 extra passes, 4 already "
            "added; 3 more would exceed it") in capsys.readouterr().out

    layer = {"layer": 0, "label": "inner", "planned": 6, "extra": 2, "passes": 8,
             "extra_max": 6, "done": 3}
    monkeypatch.setattr(served.service, "status", lambda: {"state": "Execute",
                                                           "mode": "production", "run_id": 7,
                                                           "op": "deposit", "layer": layer})
    assert await povd("status") == EXIT_OK
    assert ("layer 0 (inner): 3 of 6 + 2 extra passes made (the recipe allows 6 extra)"
            in capsys.readouterr().out)
    assert await povd("status", "--json") == EXIT_OK
    assert json.loads(capsys.readouterr().out)["layer"] == layer


async def test_jog_renews_its_lease_then_stops(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    await login(Role.MAINTENANCE, monkeypatch)
    started = time.monotonic()
    assert await povd("jog", "carriage", "-", "--for", "0.4", "--renew-every", "0.05") == 0
    assert time.monotonic() - started >= 0.4
    commands = [c[1] for c in served.service.calls]
    assert commands[-1] == "jog_stop"
    assert commands[:-1] == ["jog"] * (len(commands) - 1)
    assert len(commands) - 1 >= 3  # the first jog and at least two renewals
    assert served.service.calls[0][2] == {"axis": "carriage", "direction": "-"}
    assert served.service.calls[-1][2] == {"axis": "carriage"}
    # Only the first jog of the hold and the stop are audited.
    assert [e.action for e in served.audit.entries()] == ["login", "jog", "jog_stop"]


async def test_jog_refused_sends_nothing_more(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await login(Role.OPERATOR, monkeypatch)
    assert await povd("jog", "carriage", "+", "--for", "1") == EXIT_REFUSED
    assert "needs maintenance" in capsys.readouterr().out
    assert served.service.calls == []


async def test_no_service_is_a_connection_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
        assert await povd("status", "--url", url) == EXIT_ERROR
    assert "cannot reach the service" in capsys.readouterr().err


# -- client pieces ---------------------------------------------------------------------------


def test_url_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_url(None) == DEFAULT_URL
    monkeypatch.setenv("POVD_URL", "http://line-pc:9000/")
    assert resolve_url(None) == "http://line-pc:9000"
    assert resolve_url("http://127.0.0.1:1") == "http://127.0.0.1:1"


def test_a_token_goes_only_to_the_service_that_issued_it() -> None:
    save_token("secret-token", "http://127.0.0.1:8470/")
    assert load_token("http://127.0.0.1:8470") == "secret-token"
    assert load_token("http://elsewhere:8470") is None


def test_token_file_is_tightened_if_it_was_loose() -> None:
    path = token_path()
    path.parent.mkdir(parents=True)
    path.write_text("old")
    path.chmod(0o644)
    save_token("t", DEFAULT_URL)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_service_client_in_process(served: Served) -> None:
    def calls() -> None:
        with ServiceClient(served.url) as client:
            reply = client.login("engineer", password(Role.ENGINEER))
            assert reply["role"] == "engineer"
            assert client.whoami() == {"username": "engineer", "role": "engineer"}
            assert [e["seq"] for e in client.events(since=2)] == [3, 4, 5]
            text = (RECIPES / "smoke-test.yaml").read_text()
            assert client.validate(text)["valid"] is True
            refused = client.command("jog", {"axis": "carriage", "direction": "+"})
            assert not refused.accepted
            assert refused.reason is not None
            assert "needs maintenance" in refused.reason
            assert client.command("config", {"key": "x"}).accepted
            client.logout()

    await asyncio.to_thread(calls)


# -- admin commands --------------------------------------------------------------------------


def admin(data_dir: Path, *argv: str) -> int:
    args = parser().parse_args(list(argv))
    return run_admin_command(args, data_dir, hasher=FAST)


def test_users_and_audit_admin_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a good password\nanother password\n"))
    assert admin(tmp_path, "users", "add", "olga", "--role", "operator",
                 "--password-stdin") == EXIT_OK
    assert admin(tmp_path, "users", "passwd", "olga", "--password-stdin") == EXIT_OK
    assert admin(tmp_path, "users", "role", "olga", "engineer") == EXIT_OK
    capsys.readouterr()
    assert admin(tmp_path, "users", "list", "--json") == EXIT_OK
    assert json.loads(capsys.readouterr().out) == [{"name": "olga", "role": "engineer"}]
    store = UserStore(users_path(tmp_path), hasher=FAST)
    assert store.verify("olga", "another password") is not None
    assert stat.S_IMODE(users_path(tmp_path).stat().st_mode) == 0o600

    monkeypatch.setattr("getpass.getpass", lambda prompt="": "short")
    assert admin(tmp_path, "users", "add", "max", "--role", "viewer") == EXIT_INVALID
    assert "too short" in capsys.readouterr().err
    assert admin(tmp_path, "users", "remove", "olga") == EXIT_OK
    assert admin(tmp_path, "users", "remove", "olga") == EXIT_INVALID

    with AuditTrail(audit_path(tmp_path)) as trail:
        recorded = [(e.action, e.outcome, e.detail.get("name")) for e in trail.entries()]
        assert all(e.user.startswith("local:") for e in trail.entries())
    assert recorded == [
        ("users.add", "ok", "olga"), ("users.passwd", "ok", "olga"),
        ("users.role", "ok", "olga"), ("users.add", "failed", "max"),
        ("users.remove", "ok", "olga"), ("users.remove", "failed", "olga"),
    ]
    capsys.readouterr()
    assert admin(tmp_path, "audit", "verify") == EXIT_OK
    assert "ok, 6 entries" in capsys.readouterr().out
    assert admin(tmp_path, "audit", "list", "--last", "2") == EXIT_OK
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_passwords_typed_twice_must_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(["first password", "second password"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert admin(tmp_path, "users", "add", "olga", "--role", "operator") == EXIT_INVALID
    assert "differ" in capsys.readouterr().err
