"""The HTTP API over a fake controller: logins, tokens, roles per the table, the audit trail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from controller.config.line import load_line_config
from controller.records.audit import AuditError, AuditTrail
from controller.service.api import create_app
from controller.service.gate import CommandGate
from controller.service.login_throttle import LoginThrottle
from controller.service.protocol import CommandReply, Event
from controller.service.roles import PERMISSIONS, SERVICE_COMMANDS, Role
from controller.service.users import TokenIssuer, UserStore

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
TTL_S = 3600.0
RECIPES = Path(__file__).resolve().parents[2] / "recipes"
LINE = load_line_config()


def password(role: Role) -> str:
    return f"password-of-{role.value}"


class FakeService:
    """A ControllerService that records what it was asked and refuses what it is told to,
    behind the real command gate (the role check and the audit trail, as LineService has)."""

    line = "demo"
    machine = "lathe-1"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.refuse: dict[str, str] = {}
        self.fail: set[str] = set()
        self.state = "IDLE"
        self.gate: CommandGate | None = None

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "mode": "production", "run_id": None,
                "alarms": [{"id": "A12", "state": "active", "priority": "high",
                            "message": "exhaust draft low", "first_out": True}]}

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        return asyncio.Queue()

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        pass

    def events_since(self, seq: int, limit: int = 1000) -> list[Event]:
        return [Event(s, "state", float(s), {"to": f"S{s}"})
                for s in range(seq + 1, 6)][:limit]

    async def execute(self, user: str, command: str, args: dict[str, Any],
                      session: str | None = None) -> CommandReply:
        if self.gate is None:
            return await self._act(user, command, args)
        return await self.gate.run(user, command, args,
                                   lambda: self._act(user, command, args))

    async def _act(self, user: str, command: str, args: dict[str, Any]) -> CommandReply:
        self.calls.append((user, command, args))
        if command in self.fail:
            raise RuntimeError("device gone")
        if command in self.refuse:
            return CommandReply(command, False, self.refuse[command], self.state)
        data: dict[str, Any] = {"echo": args}
        if command == "move":  # a move's lease: renewed once, then the axis has arrived
            renewals = sum(1 for call in self.calls if call[1] == "move")
            data["lease"] = "started" if renewals == 1 else "arrived"
        return CommandReply(command, True, None, self.state, data)


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Api:
    http: httpx.AsyncClient
    service: FakeService
    audit: AuditTrail
    clock: Clock
    tokens: dict[Role, str] = field(default_factory=dict)

    async def login(self, role: Role) -> str:
        if role not in self.tokens:
            reply = await self.http.post("/api/login", json={"username": role.value,
                                                             "password": password(role)})
            assert reply.status_code == 200, reply.text
            self.tokens[role] = reply.json()["token"]
        return self.tokens[role]

    async def as_(self, role: Role, method: str, url: str, **kwargs: Any) -> httpx.Response:
        token = await self.login(role)
        return await self.http.request(method, url, headers={"Authorization": f"Bearer {token}"},
                                       **kwargs)


def make_app(tmp_path: Path, service: FakeService, clock: Clock,
             records_path: Path | None = None) -> tuple[Any, AuditTrail]:
    users = UserStore(tmp_path / "users.json", hasher=FAST)
    for role in Role:
        users.add(role.value, password(role), role)
    tokens = TokenIssuer(users, ttl_s=TTL_S, clock=clock)
    audit = AuditTrail(tmp_path / "audit.sqlite3", clock=clock)
    service.gate = CommandGate(audit, lambda name: (u.role if (u := users.get(name)) else None),
                               clock=clock)
    app = create_app(service, users, tokens, audit, LINE, records_path=records_path)
    return app, audit


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    service, clock = FakeService(), Clock()
    app, audit = make_app(tmp_path, service, clock, records_path=tmp_path / "records.sqlite3")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://povd") as http:
        yield Api(http, service, audit, clock)
    audit.close()


# -- sessions --------------------------------------------------------------------------------


async def test_login_gives_a_token_and_is_audited(api: Api) -> None:
    reply = await api.http.post("/api/login",
                                json={"username": "operator", "password": password(Role.OPERATOR)})
    assert reply.status_code == 200
    body = reply.json()
    assert body["role"] == "operator"
    assert body["username"] == "operator"
    assert body["expires_at"] == api.clock.t + TTL_S
    who = await api.http.get("/api/whoami",
                             headers={"Authorization": f"Bearer {body['token']}"})
    assert who.json() == {"username": "operator", "role": "operator"}
    [entry] = api.audit.entries()
    assert (entry.user, entry.action, entry.outcome) == ("operator", "login", "ok")
    assert body["token"] not in str(entry.detail)


@pytest.mark.parametrize(("username", "secret"),
                         [("operator", "not-the-password"), ("nobody", "password-of-operator")])
async def test_bad_login_is_401_without_saying_why(api: Api, username: str, secret: str) -> None:
    reply = await api.http.post("/api/login", json={"username": username, "password": secret})
    assert reply.status_code == 401
    assert reply.json() == {"detail": "wrong user name or password"}
    [entry] = api.audit.entries()
    assert (entry.user, entry.action, entry.outcome, entry.reason) == (
        username, "login", "failed", "bad credentials")
    assert secret not in str(entry.to_json())


async def test_no_or_bad_token_is_401(api: Api) -> None:
    assert (await api.http.get("/api/status")).status_code == 401
    reply = await api.http.get("/api/status", headers={"Authorization": "Bearer made-up"})
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    reply = await api.http.post("/api/commands/hold", json={})
    assert reply.status_code == 401
    assert api.service.calls == []


async def test_token_expires(api: Api) -> None:
    assert (await api.as_(Role.OPERATOR, "GET", "/api/status")).status_code == 200
    api.clock.t += TTL_S - 1
    assert (await api.as_(Role.OPERATOR, "GET", "/api/status")).status_code == 200
    api.clock.t += 1
    reply = await api.as_(Role.OPERATOR, "GET", "/api/status")
    assert reply.status_code == 401
    assert "expired" in reply.json()["detail"]


async def test_logout_ends_the_session(api: Api) -> None:
    assert (await api.as_(Role.VIEWER, "POST", "/api/logout")).json() == {"ok": True}
    assert (await api.as_(Role.VIEWER, "GET", "/api/status")).status_code == 401
    assert [(e.action, e.outcome) for e in api.audit.entries()] == [
        ("login", "ok"), ("logout", "ok")]


# -- commands and roles ----------------------------------------------------------------------

@pytest.mark.parametrize("command", sorted(SERVICE_COMMANDS))
async def test_each_role_is_allowed_or_refused_per_the_table(api: Api, command: str) -> None:
    for role in Role:
        api.service.calls.clear()
        reply = await api.as_(role, "POST", f"/api/commands/{command}",
                              json={"args": {"axis": "carriage"}, "reason": "test"})
        body = reply.json()
        entry = api.audit.entries()[-1]
        assert (entry.user, entry.action) == (role.value, command)
        assert entry.detail == {"args": {"axis": "carriage", "reason": "test"}}
        if role in PERMISSIONS[command]:
            assert reply.status_code == 200, role
            assert body["accepted"] is True
            assert api.service.calls == [(role.value, command, {"axis": "carriage",
                                                                "reason": "test"})]
            assert entry.outcome == "accepted"
        else:
            assert reply.status_code == 403, role
            assert body["accepted"] is False
            assert body["reason"].startswith(f"role {role.value} may not {command}")
            assert api.service.calls == []  # refused before the service was asked
            assert (entry.outcome, entry.reason) == ("refused", body["reason"])
    assert api.audit.verify().ok


async def test_a_command_needs_no_body(api: Api) -> None:
    reply = await api.as_(Role.OPERATOR, "POST", "/api/commands/hold")
    assert reply.status_code == 200
    assert api.service.calls == [("operator", "hold", {})]
    bad = await api.as_(Role.OPERATOR, "POST", "/api/commands/hold", json={"argz": {}})
    assert bad.status_code == 422  # a misspelt field is an error, not ignored


async def test_controller_refusal_is_409_with_its_reason_and_audited(api: Api) -> None:
    api.service.refuse["start"] = "state ABORTED: clear first"
    api.service.state = "ABORTED"
    text = (RECIPES / "smoke-test.yaml").read_text()
    reply = await api.as_(Role.OPERATOR, "POST", "/api/commands/start",
                          json={"args": {"recipe_text": text}})
    assert reply.status_code == 409
    assert reply.json() == {"command": "start", "accepted": False,
                            "reason": "state ABORTED: clear first", "state": "ABORTED",
                            "data": {}}
    entry = api.audit.entries()[-1]
    assert (entry.action, entry.outcome, entry.reason) == (
        "start", "refused", "state ABORTED: clear first")
    assert entry.detail["args"]["recipe_text"] == text


@pytest.mark.parametrize("command", ["launch", "status", "validate", "users"])
async def test_not_a_service_command_is_404_and_audited(api: Api, command: str) -> None:
    reply = await api.as_(Role.ENGINEER, "POST", f"/api/commands/{command}", json={})
    assert reply.status_code == 404
    assert reply.json()["accepted"] is False
    assert command in reply.json()["reason"]
    assert api.service.calls == []
    assert api.audit.entries()[-1].outcome == "refused"


async def test_a_command_that_raises_is_audited_as_failed(tmp_path: Path) -> None:
    service, clock = FakeService(), Clock()
    service.fail.add("hold")
    app, audit = make_app(tmp_path, service, clock)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://povd") as http:
        api = Api(http, service, audit, clock)
        reply = await api.as_(Role.OPERATOR, "POST", "/api/commands/hold", json={})
    assert reply.status_code == 500
    entry = audit.entries()[-1]
    assert (entry.action, entry.outcome, entry.reason) == (
        "hold", "failed", "RuntimeError: device gone")
    audit.close()


async def test_audit_unavailable_is_503(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    await api.login(Role.OPERATOR)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise AuditError(api.audit.path, "disk full")

    monkeypatch.setattr(api.audit, "append", broken)
    reply = await api.as_(Role.OPERATOR, "POST", "/api/commands/hold", json={})
    assert reply.status_code == 503
    assert reply.json() == {"detail": "audit trail unavailable: disk full"}


async def test_jog_lease_renewals_are_not_each_audited(api: Api) -> None:
    jog = {"args": {"axis": "carriage", "direction": "+"}}
    for _ in range(5):
        reply = await api.as_(Role.MAINTENANCE, "POST", "/api/commands/jog", json=jog)
        assert reply.json()["accepted"]
    other = {"args": {"axis": "carriage", "direction": "-"}}
    await api.as_(Role.MAINTENANCE, "POST", "/api/commands/jog", json=other)
    await api.as_(Role.MAINTENANCE, "POST", "/api/commands/jog_stop",
                  json={"args": {"axis": "carriage"}})
    await api.as_(Role.MAINTENANCE, "POST", "/api/commands/jog", json=jog)
    assert len(api.service.calls) == 8  # every renewal reached the service
    recorded = [(e.action, e.detail["args"].get("direction")) for e in api.audit.entries()
                if e.action != "login"]
    assert recorded == [("jog", "+"), ("jog", "-"), ("jog_stop", None), ("jog", "+")]


# -- reads -----------------------------------------------------------------------------------


async def test_viewer_reads_status_alarms_and_events(api: Api) -> None:
    status = await api.as_(Role.VIEWER, "GET", "/api/status")
    assert status.json()["state"] == "IDLE"
    alarms = await api.as_(Role.VIEWER, "GET", "/api/alarms")
    assert [a["id"] for a in alarms.json()] == ["A12"]
    events = await api.as_(Role.VIEWER, "GET", "/api/events", params={"since": 3})
    assert [(e["seq"], e["payload"]) for e in events.json()] == [
        (4, {"to": "S4"}), (5, {"to": "S5"})]
    bad = await api.as_(Role.VIEWER, "GET", "/api/events", params={"since": -1})
    assert bad.status_code == 422


async def test_runs_without_records(api: Api, tmp_path: Path) -> None:
    assert (await api.as_(Role.VIEWER, "GET", "/api/runs")).json() == []
    missing = await api.as_(Role.VIEWER, "GET", "/api/runs/7")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "no run 7"}


async def test_validate_returns_the_forecast_or_every_error(api: Api) -> None:
    text = (RECIPES / "smoke-test.yaml").read_text()
    good = await api.as_(Role.VIEWER, "POST", "/api/recipes/validate", json={"text": text})
    body = good.json()
    assert body["valid"] is True
    assert body["name"] == "smoke-test"
    assert body["forecast"]
    bad = await api.as_(Role.VIEWER, "POST", "/api/recipes/validate",
                        json={"text": "name: x\nversion: 1\nsteps: []\nbogus: 1\n"})
    body = bad.json()
    assert body["valid"] is False
    assert body["forecast"] is None
    assert any(e["field"] == "bogus" for e in body["errors"])


async def test_openapi_document_lists_the_endpoints(api: Api) -> None:
    reply = await api.http.get("/openapi.json")
    doc = reply.json()
    assert doc["info"]["title"] == "povd"
    command = doc["paths"]["/api/commands/{command}"]["post"]
    assert {"200", "403", "404", "409"} <= set(command["responses"])
    assert "CommandRequest" in doc["components"]["schemas"]
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    for path in ("/api/login", "/api/status", "/api/events", "/api/runs/{run_id}",
                 "/api/recipes/validate"):
        assert path in doc["paths"]


async def test_repeated_failed_logins_lock_the_name_out_for_a_growing_while(api: Api) -> None:
    throttle = LoginThrottle(clock=api.clock)
    api.http._transport.app.state.povd.throttle = throttle  # type: ignore[attr-defined]
    for _ in range(throttle.free_failures):
        reply = await api.http.post("/api/login",
                                    json={"username": "operator", "password": "guess"})
        assert reply.status_code == 401
    # Locked out: even the right password is not checked, and the refusal is audited.
    right = {"username": "operator", "password": password(Role.OPERATOR)}
    locked = await api.http.post("/api/login", json=right)
    assert locked.status_code == 429
    assert locked.headers["retry-after"] == "2"
    assert (api.audit.entries()[-1].action, api.audit.entries()[-1].outcome) == (
        "login", "refused")
    # Another name from the same client is locked out too (a guesser changing names).
    other = await api.http.post("/api/login", json={"username": "viewer", "password": "x"})
    assert other.status_code == 429
    api.clock.t += 2.1
    assert (await api.http.post("/api/login", json=right)).status_code == 200
    # A success clears the count: the next failure is a plain 401 again.
    again = await api.http.post("/api/login", json={"username": "operator", "password": "no"})
    assert again.status_code == 401


def test_each_failure_past_the_free_ones_doubles_the_lockout_up_to_the_maximum() -> None:
    clock = Clock()
    throttle = LoginThrottle(free_failures=2, base_lockout_s=1, max_lockout_s=8, clock=clock)
    keys = ["user:a"]
    waits = []
    for _ in range(7):
        throttle.failed(keys)
        waits.append(throttle.retry_after(keys))
    assert waits == [None, 1, 2, 4, 8, 8, 8]
    throttle.succeeded(keys)
    assert throttle.retry_after(keys) is None


def test_the_throttle_memory_is_bounded() -> None:
    throttle = LoginThrottle(max_keys=100, clock=Clock())
    for i in range(1000):
        throttle.failed([f"user:{i}"])
    assert len(throttle._failures) == 100
