"""The HMI's live feeds over real sockets (uvicorn on loopback, the fake controller of
test_api.py with a real fan-out): three browsers reading and one that reads nothing. The
readers get every item in order and their statuses while the stalled browser's socket is full;
its feed drops its oldest items at the fan-out's bound; and the feeds build one status a period
between them, not one each."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from controller.machine.telemetry import Fanout
from controller.service.hmi.live import LiveFeeds
from controller.service.hmi.sessions import SESSION_COOKIE
from controller.service.roles import Role
from tests.integration.test_api import Clock, FakeService, make_app, password

PERIOD_S = 0.2
QUEUE = 16
READERS = 3
ITEMS = 200
ITEM_BYTES = 64 * 1024  # 13 MB in all: more than the stalled socket's buffers hold
STALLED_RCVBUF = 4096


class FanoutService(FakeService):
    def __init__(self) -> None:
        super().__init__()
        self.fanout = Fanout(QUEUE)
        self.statuses = 0
        self.state = "Idle"  # a real state: the screen's commands are judged from it

    def status(self) -> dict[str, Any]:
        self.statuses += 1
        return super().status()

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        return self.fanout.subscribe()

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.fanout.unsubscribe(queue)


@dataclass
class Served:
    url: str
    service: FanoutService
    feeds: LiveFeeds


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    service = FanoutService()
    app, audit = make_app(tmp_path, service, Clock())
    feeds = app.state.hmi_live = LiveFeeds(service, PERIOD_S)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False,
                            ws="none")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert not task.done(), task
        await asyncio.sleep(0.01)
    try:
        yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", service, feeds)
    finally:
        server.should_exit = True
        server.force_exit = True  # the stalled feed's response never ends by itself
        await task
        sock.close()
        audit.close()


async def log_in(http: httpx.AsyncClient) -> str:
    reply = await http.post("/hmi/api/login", json={"username": Role.VIEWER.value,
                                                    "password": password(Role.VIEWER)})
    assert reply.status_code == 200, reply.text
    return http.cookies[SESSION_COOKIE]


class Reader:
    """A browser's EventSource: counts the statuses, keeps the items' numbers."""

    def __init__(self) -> None:
        self.statuses = 0
        self.items: list[int] = []

    async def read(self, url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=None) as http:
            await log_in(http)
            async with http.stream("GET", "/hmi/api/live") as feed:
                kind = ""
                async for line in feed.aiter_lines():
                    if line.startswith("event: "):
                        kind = line.removeprefix("event: ")
                    elif line.startswith("data: ") and kind == "status":
                        self.statuses += 1
                    elif line.startswith("data: ") and kind == "telemetry":
                        self.items.append(json.loads(line.removeprefix("data: "))["n"])


def stall(url: str, token: str) -> socket.socket:
    """A browser that opened the feed and reads nothing."""
    port = int(url.rsplit(":", 1)[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /hmi/api/live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 f"Cookie: {SESSION_COOKIE}={token}\r\n\r\n".encode("ascii"))
    return sock


async def wait_until(condition: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_readers_get_everything_while_a_stalled_feed_drops_at_its_bound(
        served: Served) -> None:
    fanout = served.service.fanout
    async with httpx.AsyncClient(base_url=served.url) as http:
        stalled = await asyncio.to_thread(stall, served.url, await log_in(http))
    try:
        await wait_until(lambda: len(fanout._queues) == 1, "the stalled feed")
        readers = [Reader() for _ in range(READERS)]
        tasks = [asyncio.create_task(r.read(served.url)) for r in readers]
        try:
            await wait_until(lambda: len(fanout._queues) == 1 + READERS, "the readers")
            started, builds = time.monotonic(), served.feeds.builds
            padding = "x" * ITEM_BYTES
            for n in range(ITEMS):
                fanout.publish({"kind": "telemetry", "n": n, "padding": padding})
                # In step with the readers (they must not drop), never with the stalled one.
                await wait_until(lambda n=n: all(r.items[-1:] == [n] for r in readers),
                                 f"item {n} read")
            await asyncio.sleep(3 * PERIOD_S)
            periods = (time.monotonic() - started) / PERIOD_S
            # The stalled feed kept the newest QUEUE items and dropped the rest it could not
            # send; the readers, in step, dropped none.
            assert fanout._queues[0].qsize() == QUEUE
            assert fanout.dropped > 0
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        stalled.close()
    for reader in readers:
        assert reader.items == list(range(ITEMS))
        assert reader.statuses >= 3
    assert served.feeds.texts <= ITEMS + QUEUE
    # One build a period for the four feeds (a feed asks once a period; with a build each it
    # would be four).
    assert served.feeds.builds - builds <= periods + 2
    assert served.service.statuses == served.feeds.builds
