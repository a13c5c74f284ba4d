"""The HTTP API fuzzed from its own OpenAPI document (schemathesis, issue 11), over real HTTP on
loopback (uvicorn, as `povd serve` runs it): whatever a client sends, no endpoint answers 5xx,
a refused request (4xx) never reaches the controller, and every endpoint except the log-ins
refuses a caller without a session.

The controller behind the API is the fake of test_api (it records every call) behind the real
command gate, users, tokens and audit trail: what is fuzzed here is the API's own handling."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings

from controller.service.roles import Role
from tests.integration.test_api import Clock, FakeService, make_app, password

# The live feed streams until the client goes: not a request/response endpoint to fuzz.
STREAMING = frozenset({"/hmi/api/live"})
OPEN = frozenset({"/api/login", "/hmi/api/login"})
REFUSED = frozenset({400, 401, 403, 404, 405, 409, 413, 415, 422, 429})

_dir = Path(tempfile.mkdtemp(prefix="povd-fuzz-"))
SERVICE = FakeService()
APP, AUDIT = make_app(_dir, SERVICE, Clock(), records_path=_dir / "records.sqlite3")
CTX: Any = APP.state.povd
ADMIN = CTX.tokens.issue(CTX.users.get(Role.ADMIN.value))
VIEWER = CTX.tokens.issue(CTX.users.get(Role.VIEWER.value))
assert password(Role.ADMIN)  # (the users are made by make_app)

schema = schemathesis.openapi.from_dict(APP.openapi())


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(APP, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)
    sock.close()


def _fuzzed(case: Any, base_url: str, token: str | None) -> None:
    if case.path in STREAMING:
        return
    before = len(SERVICE.calls)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    response = case.call(base_url=base_url, headers=headers, timeout=30)
    assert response.status_code < 500, (case.method, case.path, response.status_code,
                                        response.text[:300])
    if response.status_code in REFUSED and response.status_code != 409:
        # 409 is the controller's own refusal (it was asked); anything else never reached it.
        assert len(SERVICE.calls) == before, (case.method, case.path, response.status_code)


@schema.parametrize()
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_no_request_from_an_admin_gets_a_5xx_or_a_state_change_when_refused(
        case: Any, base_url: str) -> None:
    _fuzzed(case, base_url, ADMIN)


@schema.parametrize()
@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_no_request_from_a_viewer_gets_a_5xx_or_a_state_change_when_refused(
        case: Any, base_url: str) -> None:
    _fuzzed(case, base_url, VIEWER)


def _routes() -> list[tuple[str, str]]:
    """Every endpoint the API documents (static assets are not endpoints)."""
    return sorted((method.upper(), path) for path, item in APP.openapi()["paths"].items()
                  for method in item)


@pytest.mark.parametrize(("method", "path"), _routes())
def test_every_endpoint_but_the_log_ins_refuses_a_caller_without_a_session(
        method: str, path: str, base_url: str) -> None:
    if path in OPEN:
        return  # open by design: how a caller gets a session
    before = len(SERVICE.calls)
    concrete = path.replace("{run_id}", "1").replace("{name}", "smoke-test").replace(
        "{command}", "hold")
    assert "{" not in concrete, f"give {path}'s parameter a value"
    response = httpx.request(method, base_url + concrete, json={}, timeout=30)
    assert response.status_code == 401, (method, path, response.status_code)
    assert len(SERVICE.calls) == before
