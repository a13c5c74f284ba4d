"""The live feed of one browser: server-sent events from the supervisor's fan-out.

Each browser gets its own fan-out queue, bounded, dropping its oldest items when full
(``machine.telemetry.Fanout``): a slow or stalled browser loses samples and never delays the
supervisor, the interlocks or another browser. Between the fan-out's items a ``status`` event
(the service's status, the commands this user is offered and why not the others) goes out
once a second, so a screen is never more than a second behind and a silent feed means a lost
connection. The feed ends when the session does (logout, idle, a revoked token).

What the feeds send is built once for all of them (``LiveFeeds``), not once per browser: every
feed sends its status at the same period boundaries, and the first to ask builds the period's
view (the service's status, then per role its commands and JSON, then per user the text), which
the others reuse; a fan-out item, the same object in every queue, is made into its event's text
once. Five screens then cost the event loop about one status a second, not five. Nothing is
pushed to a feed: each takes the shared text when it is ready to send, so a stalled browser holds
no one up, and what is shared is one period's views and a few recent items, whatever the number
of feeds."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from controller.service.hmi.availability import command_refusals
from controller.service.protocol import ControllerService
from controller.service.roles import Role
from controller.service.users import User

STATUS_PERIOD_S = 1.0
RETRY_MS = 1000  # how soon a browser's EventSource reconnects by itself
# Items whose text is kept for the feeds still to send them: a feed more than this many items
# behind (a stalled one) makes its own, and the memory stays bounded.
_ITEMS_KEPT = 32
# State changes and alarms the current views already show (see LiveFeeds.changed).
_CHANGES_KEPT = 32


def _json(data: Any) -> str:
    return json.dumps(data, default=str, separators=(",", ":"))


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {_json(data)}\n\n"


def _role_view(status: dict[str, Any], role: Role) -> dict[str, Any]:
    return {**status, "commands": command_refusals(role, status["state"], status["mode"],
                                                   status.get("maintenance_refusal"))}


class LiveFeeds:
    """What the live feeds of one service share: each period's status views and the recent
    fan-out items' event text. Created once per app; the feeds ask it, it never waits on them.

    ``builds`` counts the service's statuses taken and ``texts`` the events made into text (for
    tests and observability)."""

    def __init__(self, service: ControllerService, period_s: float = STATUS_PERIOD_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.period_s = period_s
        self.clock = clock
        self.builds = 0
        self.texts = 0
        self._period: int | None = None  # the period the views below belong to; None: stale
        self._status: dict[str, Any] = {}
        self._roles: dict[Role, str] = {}  # the role's view as JSON, without the user
        self._users: dict[tuple[str, Role], str] = {}  # the whole status event
        self._changes: deque[dict[str, Any]] = deque(maxlen=_CHANGES_KEPT)
        self._items: deque[tuple[dict[str, Any], str]] = deque(maxlen=_ITEMS_KEPT)

    def period(self, now: float) -> int:
        return math.floor(now / self.period_s)

    def period_end(self, period: int) -> float:
        return (period + 1) * self.period_s

    def changed(self, item: dict[str, Any]) -> None:
        """A feed got a state change or an alarm and will send a status at once: the views
        built before it are stale. Once per item: the feeds that get it later find views built
        after the first one told of it."""
        if any(seen is item for seen in self._changes):
            return
        self._changes.append(item)
        self._period = None

    def status_event(self, user: User) -> str:
        """This period's ``status`` event for ``user``, built by the first feed to ask."""
        period = self.period(self.clock())
        if period != self._period:
            self._status = self.service.status()
            self._roles.clear()
            self._users.clear()
            self._period = period
            self.builds += 1
        key = (user.name, user.role)
        text = self._users.get(key)
        if text is None:
            body = self._roles.get(user.role)
            if body is None:
                body = self._roles[user.role] = _json(_role_view(self._status, user.role))
            # The user goes last, so the role's JSON is reused as it is: the same text as
            # serialising the user's whole view.
            text = (f"event: status\ndata: {body[:-1]},\"user\":"
                    f"{_json({'name': user.name, 'role': user.role.value})}}}\n\n")
            self._users[key] = text
        return text

    def item_event(self, item: dict[str, Any]) -> str:
        """A fan-out item's event; the fan-out puts the same object in every feed's queue."""
        for seen, text in self._items:
            if seen is item:
                return text
        text = sse(str(item.get("kind", "item")), item)
        self._items.append((item, text))
        self.texts += 1
        return text


async def live_feed(feeds: LiveFeeds, user: User,
                    session_over: Callable[[], Awaitable[str | None]]) -> AsyncIterator[str]:
    """``session_over`` says why the session has ended (None while it lasts); checked with
    each status."""
    queue = feeds.service.subscribe()
    try:
        yield f"retry: {RETRY_MS}\n\n"
        sent: int | None = None  # the period of the last status sent
        while True:
            now = feeds.clock()
            if sent != feeds.period(now):
                why = await session_over()
                if why is not None:
                    yield sse("logout", {"reason": why})
                    return
                yield feeds.status_event(user)
                sent = feeds.period(now)
            # At least a millisecond: a float boundary a hair off must not spin the loop.
            timeout = max(feeds.period_end(sent) - feeds.clock(), 1e-3)
            try:
                item = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                continue
            yield feeds.item_event(item)
            if item.get("kind") in ("state", "alarm"):
                feeds.changed(item)  # the panels follow a change at once
                sent = None
    finally:
        feeds.service.unsubscribe(queue)
