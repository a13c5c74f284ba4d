"""The live feed of one browser: server-sent events from the supervisor's fan-out.

Each browser gets its own fan-out queue, bounded, dropping its oldest items when full
(``machine.telemetry.Fanout``): a slow or stalled browser loses samples and never delays the
supervisor, the interlocks or another browser. Between the fan-out's items a ``status`` event
(the service's status, the commands this user is offered and why not the others) goes out
once a second, so a screen is never more than a second behind and a silent feed means a lost
connection. The feed ends when the session does (logout, idle, a revoked token)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from controller.service.hmi.availability import command_refusals
from controller.service.protocol import ControllerService
from controller.service.users import User

STATUS_PERIOD_S = 1.0
RETRY_MS = 1000  # how soon a browser's EventSource reconnects by itself


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str, separators=(',', ':'))}\n\n"


def status_view(service: ControllerService, user: User) -> dict[str, Any]:
    status = service.status()
    status["commands"] = command_refusals(user.role, status["state"], status["mode"],
                                          status.get("maintenance_refusal"))
    status["user"] = {"name": user.name, "role": user.role.value}
    return status


async def live_feed(service: ControllerService, user: User,
                    session_over: Callable[[], Awaitable[str | None]]) -> AsyncIterator[str]:
    """``session_over`` says why the session has ended (None while it lasts); checked with
    each status."""
    queue = service.subscribe()
    try:
        yield f"retry: {RETRY_MS}\n\n"
        next_status = 0.0
        while True:
            now = time.monotonic()
            if now >= next_status:
                why = await session_over()
                if why is not None:
                    yield sse("logout", {"reason": why})
                    return
                yield sse("status", status_view(service, user))
                next_status = now + STATUS_PERIOD_S
            try:
                item = await asyncio.wait_for(queue.get(), next_status - now)
            except TimeoutError:
                continue
            yield sse(str(item.get("kind", "item")), item)
            if item.get("kind") in ("state", "alarm"):
                next_status = 0.0  # the panels follow a change at once
    finally:
        service.unsubscribe(queue)
