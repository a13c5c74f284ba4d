"""The browser's session: the login token in an HttpOnly, SameSite cookie (server-sent events
cannot carry a bearer header), a CSRF token the page sends with every command, and the idle
logout.

The CSRF token is an HMAC of the session's own token, so it needs no storage and a page on
another origin can neither read it (the cookie is HttpOnly, the JSON that carries it is
same-origin) nor derive it. Activity is what the operator does (a command, or input on the page
reported by a touch), never the live feed's traffic: a screen left open logs out."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

SESSION_COOKIE = "povd_session"
CSRF_HEADER = "X-CSRF-Token"
DEFAULT_IDLE_LOGOUT_S = 15 * 60.0
_CSRF_CONTEXT = b"povd-hmi-csrf"


def csrf_token(session_token: str) -> str:
    return hmac.new(session_token.encode(), _CSRF_CONTEXT, hashlib.sha256).hexdigest()


def csrf_ok(session_token: str, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(csrf_token(session_token), sent)


def _key(session_token: str) -> str:
    return hashlib.sha256(session_token.encode()).hexdigest()


class BrowserSessions:
    """When each browser session was last used; idle longer than ``idle_logout_s`` and it is
    over. Only keys derived from the tokens are kept."""

    def __init__(self, idle_logout_s: float = DEFAULT_IDLE_LOGOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_logout_s = idle_logout_s
        self.clock = clock
        self._last_used: dict[str, float] = {}

    def touch(self, session_token: str) -> None:
        """The operator did something: the idle time starts again."""
        self._last_used[_key(session_token)] = self.clock()

    def idle_s(self, session_token: str) -> float:
        """Seconds since the session was last used; a session this service has not seen (a
        cookie from before a restart) starts its idle time now."""
        now = self.clock()
        return now - self._last_used.setdefault(_key(session_token), now)

    def idled_out(self, session_token: str) -> bool:
        return self.idle_s(session_token) > self.idle_logout_s

    def close(self, session_token: str) -> None:
        self._last_used.pop(_key(session_token), None)
