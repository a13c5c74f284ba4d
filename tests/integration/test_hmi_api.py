"""The HMI over HTTP (create_app over the fake controller of test_api.py): a command from a
cookie session needs the CSRF header, a bearer token does not, an idle cookie session is logged
out, audited; a page opened mid-run gets the trends' last ten minutes from the run's records."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from controller.records.audit import AuditTrail
from controller.records.run_records import RunRecords
from controller.service.hmi.sessions import CSRF_HEADER, SESSION_COOKIE, BrowserSessions
from controller.service.hmi.trend_history import TREND_WINDOW_S
from controller.service.roles import Role
from tests.integration.test_api import Clock, FakeService, make_app, password
from tests.unit.test_records import header

IDLE_S = 600.0


@dataclass
class Hmi:
    transport: httpx.ASGITransport
    service: FakeService
    audit: AuditTrail
    idle_clock: Clock

    def browser(self) -> httpx.AsyncClient:
        """A browser of its own: its own cookie jar."""
        return httpx.AsyncClient(transport=self.transport, base_url="http://povd")

    async def log_in(self, browser: httpx.AsyncClient, role: Role) -> str:
        """Log in as the HMI does; the CSRF token the page is given."""
        reply = await browser.post("/hmi/api/login",
                                   json={"username": role.value, "password": password(role)})
        assert reply.status_code == 200, reply.text
        assert browser.cookies.get(SESSION_COOKIE)
        body = reply.json()
        assert body["csrf_header"] == CSRF_HEADER
        csrf: str = body["csrf"]
        return csrf


@pytest.fixture
async def hmi(tmp_path: Path) -> AsyncIterator[Hmi]:
    service, clock, idle_clock = FakeService(), Clock(), Clock()
    app, audit = make_app(tmp_path, service, clock, records_path=tmp_path / "records.sqlite3")
    app.state.povd.browser = BrowserSessions(IDLE_S, clock=idle_clock)
    yield Hmi(httpx.ASGITransport(app=app), service, audit, idle_clock)
    audit.close()


async def test_a_cookie_sessions_command_needs_the_csrf_header(hmi: Hmi) -> None:
    async with hmi.browser() as browser:
        csrf = await hmi.log_in(browser, Role.OPERATOR)

        refused = await browser.post("/api/commands/hold", json={"args": {}})
        assert refused.status_code == 403
        assert CSRF_HEADER in refused.json()["detail"]
        wrong = await browser.post("/api/commands/hold", json={"args": {}},
                                   headers={CSRF_HEADER: "0" * 64})
        assert wrong.status_code == 403
        assert hmi.service.calls == []

        done = await browser.post("/api/commands/hold", json={"args": {}},
                                  headers={CSRF_HEADER: csrf})
        assert done.status_code == 200, done.text
        assert done.json()["accepted"] is True
        assert hmi.service.calls == [("operator", "hold", {})]


async def test_a_csrf_token_works_for_its_own_session_only(hmi: Hmi) -> None:
    async with hmi.browser() as first, hmi.browser() as second:
        first_csrf = await hmi.log_in(first, Role.OPERATOR)
        await hmi.log_in(second, Role.OPERATOR)
        reply = await second.post("/api/commands/hold", json={"args": {}},
                                  headers={CSRF_HEADER: first_csrf})
        assert reply.status_code == 403
        assert hmi.service.calls == []


async def test_reads_and_bearer_tokens_need_no_csrf_header(hmi: Hmi) -> None:
    async with hmi.browser() as browser:
        await hmi.log_in(browser, Role.OPERATOR)
        assert (await browser.get("/api/status")).status_code == 200
    async with hmi.browser() as cli:
        login = await cli.post("/api/login", json={"username": "operator",
                                                   "password": password(Role.OPERATOR)})
        token = login.json()["token"]
        reply = await cli.post("/api/commands/hold", json={"args": {}},
                               headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 200
        assert reply.json()["accepted"] is True


async def test_an_idle_cookie_session_is_logged_out(hmi: Hmi) -> None:
    async with hmi.browser() as browser:
        csrf = await hmi.log_in(browser, Role.OPERATOR)
        hmi.idle_clock.t += IDLE_S - 1
        touched = await browser.post("/hmi/api/touch", headers={CSRF_HEADER: csrf})
        assert touched.status_code == 200  # input on the page: the idle time starts again
        hmi.idle_clock.t += IDLE_S - 1
        assert (await browser.get("/api/status")).status_code == 200

        hmi.idle_clock.t += 2
        reply = await browser.get("/api/status")
        assert reply.status_code == 401
        assert reply.json()["detail"] == "logged out: idle for more than 10 min"
        # The token itself is revoked: the cookie is no way back in.
        hmi.idle_clock.t = 0.0
        assert (await browser.get("/api/status")).status_code == 401
    logout = [e for e in hmi.audit.entries() if e.action == "logout"]
    assert [(e.user, e.outcome, e.reason) for e in logout] == [
        ("operator", "ok", "idle for more than 10 min")]


def sample(forward_kw: float) -> dict[str, object]:
    """A recorded sample as the supervisor writes it (Telemetry.to_json), abridged."""
    return {
        "rf": {"forward_kw": forward_kw, "reflected_kw": 0.5, "plasma_lit": True},
        "safety": {"water_flow_l_min": 25.0},
        "mfcs": {"mfc_o2": {"mass_slpm": 80.0, "pressure_psia": 14.7}},
        "axes": {"carriage": {"position_mm": 300.0}},
        "gauge": {"valid": True, "diameter_mm": 31.2},
        "links": {"rf": True},
        "state": "Execute",
    }


async def test_a_runs_trend_is_its_last_ten_minutes_of_drawn_values(
        hmi: Hmi, tmp_path: Path) -> None:
    now = time.time()
    async with RunRecords(tmp_path / "records.sqlite3", line="line-sim") as records:
        run_id = await records.start_run(header())
        for age_s, power in ((TREND_WINDOW_S + 60, 10.0), (300.0, 40.0), (5.0, 50.0)):
            records.add_telemetry(run_id, sample(power), t=now - age_s)
        await records.flush()
    async with hmi.browser() as browser:
        await hmi.log_in(browser, Role.VIEWER)
        reply = await browser.get(f"/hmi/api/runs/{run_id}/trend")
        assert reply.status_code == 200, reply.text
        rows = reply.json()
        assert [row["rf"]["forward_kw"] for row in rows] == [40.0, 50.0]
        assert rows[0] == {
            "t": pytest.approx(now - 300.0),
            "rf": {"forward_kw": 40.0, "reflected_kw": 0.5},
            "mfcs": {"mfc_o2": {"mass_slpm": 80.0}},
            "gauge": {"valid": True, "diameter_mm": 31.2},
        }
        assert (await browser.get(f"/hmi/api/runs/{run_id + 1}/trend")).json() == []
    async with hmi.browser() as stranger:
        assert (await stranger.get(f"/hmi/api/runs/{run_id}/trend")).status_code == 401
