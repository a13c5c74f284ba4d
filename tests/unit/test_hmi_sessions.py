"""The browser session's CSRF token and idle logout (controller/service/hmi/sessions.py)."""

from __future__ import annotations

import pytest

from controller.service.hmi.sessions import BrowserSessions, csrf_ok, csrf_token

IDLE_S = 900.0


class Clock:
    def __init__(self) -> None:
        self.t = 5_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sessions(clock: Clock) -> BrowserSessions:
    return BrowserSessions(IDLE_S, clock=clock)


# -- CSRF ------------------------------------------------------------------------------------

def test_a_sessions_own_csrf_token_passes() -> None:
    assert csrf_ok("session-a", csrf_token("session-a"))


def test_the_token_is_fixed_per_session_and_differs_between_sessions() -> None:
    assert csrf_token("session-a") == csrf_token("session-a")
    assert csrf_token("session-a") != csrf_token("session-b")


@pytest.mark.parametrize("sent", [None, "", "0" * 64, csrf_token("session-b")],
                         ids=["missing", "empty", "made-up", "another-sessions"])
def test_any_other_csrf_token_fails(sent: str | None) -> None:
    assert not csrf_ok("session-a", sent)


def test_the_token_does_not_give_away_the_session() -> None:
    token = csrf_token("session-a")
    assert "session-a" not in token
    assert len(token) == 64  # a SHA-256 HMAC, hex


# -- idle logout -----------------------------------------------------------------------------

def test_a_session_idles_out_only_past_the_limit(sessions: BrowserSessions,
                                                 clock: Clock) -> None:
    sessions.touch("s")
    clock.t += IDLE_S
    assert sessions.idle_s("s") == IDLE_S
    assert not sessions.idled_out("s")
    clock.t += 0.5
    assert sessions.idled_out("s")


def test_activity_starts_the_idle_time_again(sessions: BrowserSessions, clock: Clock) -> None:
    sessions.touch("s")
    clock.t += IDLE_S - 1
    sessions.touch("s")
    clock.t += IDLE_S - 1
    assert not sessions.idled_out("s")
    clock.t += 2
    assert sessions.idled_out("s")


def test_looking_is_not_activity(sessions: BrowserSessions, clock: Clock) -> None:
    """Asking how idle a session is (the live feed does so every second) does not renew it."""
    sessions.touch("s")
    for _ in range(10):
        clock.t += IDLE_S / 10 + 1
        sessions.idled_out("s")
    assert sessions.idled_out("s")


def test_an_unseen_session_starts_its_idle_time_when_first_seen(
        sessions: BrowserSessions, clock: Clock) -> None:
    """A cookie from before a service restart is not logged out at once."""
    assert sessions.idle_s("from-before") == 0.0
    clock.t += IDLE_S + 1
    assert sessions.idled_out("from-before")


def test_sessions_idle_independently(sessions: BrowserSessions, clock: Clock) -> None:
    sessions.touch("a")
    clock.t += IDLE_S - 1
    sessions.touch("b")
    clock.t += 2
    assert sessions.idled_out("a")
    assert not sessions.idled_out("b")


def test_a_closed_session_is_forgotten(sessions: BrowserSessions, clock: Clock) -> None:
    sessions.touch("s")
    clock.t += IDLE_S + 1
    sessions.close("s")
    assert sessions.idle_s("s") == 0.0  # seen afresh, as an unknown cookie
    sessions.close("never-seen")  # closing an unknown session is no error
