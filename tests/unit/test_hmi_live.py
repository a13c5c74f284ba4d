"""The HMI's live feeds share their work: five feeds cost one status a period and one text per
fan-out item; each user still gets their own role's commands and their own name, the same
text as serialising their whole view; a state change is shown at once with one build for every
feed; a stalled feed holds no one up and keeps no more than the fan-out's bound."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from controller.machine.telemetry import Fanout
from controller.service.hmi.availability import command_refusals
from controller.service.hmi.live import RETRY_MS, LiveFeeds, live_feed, sse
from controller.service.roles import Role
from controller.service.users import User

PERIOD_S = 1.0
QUEUE = 8


class Clock:
    def __init__(self) -> None:
        self.t = 1000.25

    def __call__(self) -> float:
        return self.t


class Service:
    """The part of a ControllerService a live feed uses, counting the statuses it builds."""

    line = "demo"
    machine = "lathe-1"

    def __init__(self) -> None:
        self.fanout = Fanout(QUEUE)
        self.state = "Idle"
        self.statuses = 0

    def status(self) -> dict[str, Any]:
        self.statuses += 1
        return self.document(self.statuses)

    def document(self, built: int) -> dict[str, Any]:
        """The status it built ``built``-th, without counting."""
        return {"state": self.state, "mode": "production", "run_id": 7,
                "maintenance_refusal": None, "telemetry": {"rf": {"forward_kw": 41.5}},
                "alarms": [], "built": built}

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        return self.fanout.subscribe()

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.fanout.unsubscribe(queue)


async def session_lasts() -> str | None:
    return None


Feed = AsyncGenerator[str, None]


def feed_of(feeds: LiveFeeds, user: User) -> Feed:
    feed = live_feed(feeds, user, session_lasts)
    assert isinstance(feed, AsyncGenerator)
    return feed


async def open_feed(feeds: LiveFeeds, user: User) -> Feed:
    """A feed past its retry line and its first status."""
    feed = feed_of(feeds, user)
    assert await anext(feed) == f"retry: {RETRY_MS}\n\n"
    assert (await anext(feed)).startswith("event: status\n")
    return feed


def event(text: str) -> tuple[str, dict[str, Any]]:
    head, data = text.split("\n")[:2]
    document: dict[str, Any] = json.loads(data.removeprefix("data: "))
    return head.removeprefix("event: "), document


async def status_and_item(feed: Feed) -> tuple[str, str]:
    """A new period's status and an item, in the order the feed sends them (the item first
    when it was waiting for one as the period ended)."""
    first, second = await anext(feed), await anext(feed)
    return (first, second) if first.startswith("event: status\n") else (second, first)


def expected_status(status: dict[str, Any], user: User) -> str:
    """The view as one document, serialised whole (what each feed built for itself before)."""
    view = {**status, "commands": command_refusals(user.role, status["state"], status["mode"]),
            "user": {"name": user.name, "role": user.role.value}}
    return sse("status", view)


@pytest.fixture
def service() -> Service:
    return Service()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def feeds(service: Service, clock: Clock) -> LiveFeeds:
    return LiveFeeds(service, PERIOD_S, clock)  # type: ignore[arg-type] # the part it uses


async def test_five_feeds_build_one_status_per_period_and_one_text_per_item(
        service: Service, clock: Clock, feeds: LiveFeeds) -> None:
    user = User("olga", Role.OPERATOR)
    live = [await open_feed(feeds, user) for _ in range(5)]
    assert service.statuses == feeds.builds == 1
    for period in range(1, 4):
        clock.t += PERIOD_S
        sample = {"kind": "telemetry", "t": clock.t, "rf": {"forward_kw": 40.0 + period}}
        service.fanout.publish(sample)
        sent = [await status_and_item(feed) for feed in live]
        statuses, items = {status for status, _ in sent}, {item for _, item in sent}
        assert service.statuses == feeds.builds == 1 + period
        assert statuses == {expected_status(service.document(1 + period), user)}
        assert items == {sse("telemetry", sample)}
        assert feeds.texts == period
    for feed in live:
        await feed.aclose()
    assert service.fanout._queues == []


async def test_each_role_gets_its_commands_and_each_user_their_name(
        service: Service, feeds: LiveFeeds) -> None:
    users = [User("olga", Role.OPERATOR), User("oscar", Role.OPERATOR),
             User("vera", Role.VIEWER), User("mike", Role.MAINTENANCE)]
    texts = {}
    for user in users:
        feed = feed_of(feeds, user)
        await anext(feed)
        texts[user] = await anext(feed)
        await feed.aclose()
    assert service.statuses == 1
    status = service.document(1)
    for user, text in texts.items():
        assert text == expected_status(status, user)
        assert event(text)[1]["user"] == {"name": user.name, "role": user.role.value}
    assert event(texts[users[0]])[1]["commands"] != event(texts[users[2]])[1]["commands"]


async def test_a_state_change_is_shown_at_once_with_one_build_for_every_feed(
        service: Service, feeds: LiveFeeds) -> None:
    live = [await open_feed(feeds, User(f"user{i}", Role.OPERATOR)) for i in range(5)]
    service.state = "Execute"
    change = {"kind": "state", "from": "Idle", "to": "Execute"}
    service.fanout.publish(change)
    for feed in live:
        assert event(await anext(feed)) == ("state", change)
        kind, status = event(await anext(feed))  # in the same period: at once
        assert (kind, status["state"]) == ("status", "Execute")
    assert feeds.builds == 2


async def test_a_stalled_feed_holds_no_one_up_and_keeps_only_the_fanouts_bound(
        service: Service, clock: Clock, feeds: LiveFeeds) -> None:
    stalled = await open_feed(feeds, User("sam", Role.VIEWER))
    readers = [await open_feed(feeds, User(f"user{i}", Role.OPERATOR)) for i in range(4)]
    samples = [{"kind": "telemetry", "n": n} for n in range(10 * QUEUE)]
    for n, sample in enumerate(samples):
        if n % 4 == 0:
            clock.t += PERIOD_S
        service.fanout.publish(sample)
        for feed in readers:
            item = (await status_and_item(feed))[1] if n % 4 == 0 else await anext(feed)
            assert item == sse("telemetry", sample)
    assert feeds.builds == 1 + len(samples) // 4  # the stalled feed asked for none of them
    queue = service.fanout._queues[0]
    assert queue.qsize() == QUEUE
    assert service.fanout.dropped == len(samples) - QUEUE
    # Picked up again, it sends this period's view and the newest items it kept.
    status, first = await status_and_item(stalled)
    assert event(status)[1]["user"]["name"] == "sam"
    assert feeds.builds == 1 + len(samples) // 4
    kept = [event(text)[1]["n"] for text in [first] + [await anext(stalled)
                                                       for _ in range(QUEUE - 1)]]
    assert kept == list(range(len(samples) - QUEUE, len(samples)))
    for feed in (stalled, *readers):
        await feed.aclose()


async def test_the_feed_ends_with_the_session(service: Service, feeds: LiveFeeds) -> None:
    async def over() -> str | None:
        return "logged out: idle"

    feed = live_feed(feeds, User("olga", Role.OPERATOR), over)
    await anext(feed)
    assert event(await anext(feed)) == ("logout", {"reason": "logged out: idle"})
    with pytest.raises(StopAsyncIteration):
        await anext(feed)
    assert service.fanout._queues == []
