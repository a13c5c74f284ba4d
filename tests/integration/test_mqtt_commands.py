"""Issue 11: MQTT commands that must not run (again): retained, expired, redelivered.

Against a real mosquitto (tests/integration/mosquitto_fixture.py) and the fake service of
test_mqtt.py, with a real audit trail: every refusal made by the bridge itself is audited.
- A retained command is refused with a reason, audited, cleared from the broker, never executed
  (it used to run at every reconnect, when the broker hands retained messages over again).
- A duplicate request id (MQTT 5 correlation data, per user and response topic) gets the
  original reply again and is not executed twice; the memory is bounded (size and window).
- Message expiry: the broker drops a queued command whose interval passed while the controller
  was away (checked here, not assumed); one that expires in the bridge's own queue (behind a
  slow command) is refused; a controller keeping a session refuses a command with no expiry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.records.audit import AuditEntry, AuditTrail
from controller.service.mqtt import MqttBridge
from controller.service.mqtt_commands import RequestMemory
from controller.service.protocol import CommandReply
from tests.integration.mosquitto_fixture import MosquittoBroker
from tests.integration.test_mqtt import (
    BASE,
    DEADLINE_S,
    FakeService,
    Watcher,
    settings_for,
    until,
)

REPLIES = f"{BASE}/reply/alice/t"


def request_properties(correlation: bytes, *, expiry_s: int | None = None,
                       reply_topic: str = REPLIES) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ResponseTopic = reply_topic
    properties.CorrelationData = correlation
    if expiry_s is not None:
        properties.MessageExpiryInterval = expiry_s
    return properties


class Requester(Watcher):
    """Alice: sends commands and reads the replies by correlation data."""

    def __init__(self, broker: MosquittoBroker) -> None:
        super().__init__(broker, "alice", f"{BASE}/reply/alice/#")

    async def send(self, command: str, correlation: bytes, payload: bytes = b"", *,
                   retain: bool = False, expiry_s: int | None = None) -> None:
        await self.client.publish(f"{BASE}/cmd/alice/{command}", payload, qos=1, retain=retain,
                                  properties=request_properties(correlation, expiry_s=expiry_s))

    def replies(self, correlation: bytes) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.seen
                if getattr(m.properties, "CorrelationData", None) == correlation]

    async def reply(self, correlation: bytes, count: int = 1) -> list[dict[str, Any]]:
        return await self.wait_for(
            lambda: r if len(r := self.replies(correlation)) >= count else None,
            f"{count} replies to {correlation!r}")


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditTrail]:
    with AuditTrail(tmp_path / "audit.sqlite") as trail:
        yield trail


def audited(audit: AuditTrail, reason_part: str) -> list[AuditEntry]:
    return [e for e in audit.entries() if reason_part in (e.reason or "")]


# -- retained ----------------------------------------------------------------------------------
async def test_a_retained_command_is_refused_audited_cleared_and_never_executed(
        mosquitto: MosquittoBroker, audit: AuditTrail) -> None:
    service = FakeService()
    async with Requester(mosquitto) as alice:
        # Left on the broker before the controller connects: handed over at its subscription.
        # (A payload, since an empty retained message only deletes the topic's retained one.)
        await alice.send("hold", b"r-1", b"{}", retain=True)
        async with MqttBridge(service, settings_for(mosquitto), audit=audit) as bridge:
            await asyncio.wait_for(bridge.wait_connected(), DEADLINE_S)
            [early] = await alice.reply(b"r-1")
            # Published retained while the controller listens: delivered live, refused too.
            await alice.send("stop", b"r-2", b"{}", retain=True)
            [live] = await alice.reply(b"r-2")
            await until(lambda: bridge.counters.retained == 2, "both retained commands seen")
        for reply, command in ((early, "hold"), (live, "stop")):
            assert reply["accepted"] is False
            assert reply["command"] == command
            assert "retained" in reply["reason"]
        assert service.executed == []
        assert service.state == "Idle"
        entries = audited(audit, "retained")
        assert [(e.user, e.action, e.outcome) for e in entries] == [
            ("alice", "hold", "refused"), ("alice", "stop", "refused")]
        assert entries[0].detail["channel"] == "mqtt"

        # Cleared from the broker: a controller connecting again is not handed them.
        async with MqttBridge(service, settings_for(mosquitto), audit=audit) as again:
            await asyncio.wait_for(again.wait_connected(), DEADLINE_S)
            await alice.send("hold", b"r-3")
            await alice.reply(b"r-3")
            assert again.counters.retained == 0
        assert service.executed == [("alice", "hold", {})]  # r-3 only
        async with Watcher(mosquitto, "alice", f"{BASE}/cmd/alice/#") as late:
            # Retained messages come at the subscription, ahead of anything published after.
            await alice.client.publish(f"{BASE}/cmd/alice/marker", b"", qos=1)
            await late.wait_for(lambda: late.seen or None, "the marker")
            assert [m.topic.value for m in late.seen] == [f"{BASE}/cmd/alice/marker"]


# -- duplicate request ids -----------------------------------------------------------------------
async def test_a_duplicate_request_id_gets_the_original_reply_and_is_not_executed_again(
        mosquitto: MosquittoBroker, audit: AuditTrail) -> None:
    service = FakeService()
    async with (MqttBridge(service, settings_for(mosquitto), audit=audit) as bridge,
                Requester(mosquitto) as alice):
        await asyncio.wait_for(bridge.wait_connected(), DEADLINE_S)
        await alice.send("hold", b"d-1", b'{"why": "x"}')
        [first] = await alice.reply(b"d-1")
        service.transition("Execute", cause="the operator at the HMI")  # the state moved on
        await alice.send("hold", b"d-1", b'{"why": "x"}')  # e.g. resent after a reconnect
        [_, again] = await alice.reply(b"d-1", 2)
        assert first == {"command": "hold", "accepted": True, "reason": None, "state": "Held",
                         "data": {}}
        assert again == first  # the original reply, not a second execution's
        assert service.executed == [("alice", "hold", {"why": "x"})]
        assert service.state == "Execute"

        # The same id for something else is refused, never taken for the first.
        await alice.send("stop", b"d-1")
        [*_, reused] = await alice.reply(b"d-1", 3)
        assert reused["accepted"] is False
        assert "request id" in reused["reason"]
        assert service.executed == [("alice", "hold", {"why": "x"})]
        assert bridge.counters.duplicates == 2
    assert len(audited(audit, "duplicate")) == 1
    assert len(audited(audit, "request id")) == 2


async def test_the_request_memory_is_bounded(mosquitto: MosquittoBroker) -> None:
    service = FakeService()
    settings = settings_for(mosquitto, dedupe_requests=2)
    async with (MqttBridge(service, settings) as bridge, Requester(mosquitto) as alice):
        await asyncio.wait_for(bridge.wait_connected(), DEADLINE_S)
        for correlation in (b"b-1", b"b-2", b"b-3"):
            await alice.send("hold", correlation)
            await alice.reply(correlation)
        await alice.send("hold", b"b-1")  # forgotten: the oldest of three, beyond two
        await alice.reply(b"b-1", 2)
        await alice.send("hold", b"b-3")  # remembered
        await alice.reply(b"b-3", 2)
    assert len(service.executed) == 4
    assert bridge.counters.duplicates == 1


def test_the_request_memory_forgets_after_its_window() -> None:
    now = [0.0]
    memory = RequestMemory(size=10, window_s=60.0, clock=lambda: now[0])
    reply = CommandReply("hold", True, None, "Held")
    key = ("alice", REPLIES, b"w-1")
    memory.remember(key, ("hold", "{}"), reply)
    now[0] = 59.0
    assert memory.recall(key, ("hold", "{}")) is reply
    assert isinstance(memory.recall(key, ("stop", "{}")), str)  # reused for another command
    now[0] = 61.0
    assert memory.recall(key, ("hold", "{}")) is None
    assert len(memory) == 0


# -- message expiry ----------------------------------------------------------------------------
async def test_commands_queued_while_the_controller_is_away_expire_at_the_broker(
        mosquitto: MosquittoBroker, audit: AuditTrail) -> None:
    """What mosquitto really does with a persistent session's queue: an expired command is
    never delivered; the rest arrive, and one without an expiry interval is refused (it could
    be hours old)."""
    service = FakeService()
    settings = settings_for(mosquitto, session_expiry_s=300)
    async with MqttBridge(service, settings, audit=audit) as bridge:
        await asyncio.wait_for(bridge.wait_connected(), DEADLINE_S)  # the session exists
    async with Requester(mosquitto) as alice:
        await alice.send("stop", b"e-1", expiry_s=1)
        await alice.send("hold", b"e-2", expiry_s=300)
        await alice.send("unhold", b"e-3")  # no expiry interval
        # e-1's interval passes while the controller is away. mosquitto counts whole seconds
        # and hands over a message in its last second with no interval left (the property
        # dropped, so a kept session's bridge refuses it as having none): wait past that.
        await asyncio.sleep(3.0)
        async with MqttBridge(service, settings, audit=audit) as back:
            await asyncio.wait_for(back.wait_connected(), DEADLINE_S)
            [held] = await alice.reply(b"e-2")
            [no_expiry] = await alice.reply(b"e-3")
            assert alice.replies(b"e-1") == []  # queued ahead of e-2: dropped by the broker
    assert held["accepted"] is True
    assert no_expiry["accepted"] is False
    assert "expiry" in no_expiry["reason"]
    assert service.executed == [("alice", "hold", {})]
    assert [e.action for e in audited(audit, "expiry")] == ["unhold"]


class SlowService(FakeService):
    """``hold`` waits until released: the next command waits in the bridge's queue."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def execute(self, user: str, command: str, args: dict[str, Any],
                      session: str | None = None) -> CommandReply:
        if command == "hold":
            self.holding.set()
            await self.release.wait()
        return await super().execute(user, command, args, session)


async def test_a_command_expiring_in_the_bridges_queue_is_refused(
        mosquitto: MosquittoBroker, audit: AuditTrail) -> None:
    service = SlowService()
    async with (MqttBridge(service, settings_for(mosquitto), audit=audit) as bridge,
                Requester(mosquitto) as alice):
        await asyncio.wait_for(bridge.wait_connected(), DEADLINE_S)
        await alice.send("hold", b"q-1")
        await asyncio.wait_for(service.holding.wait(), DEADLINE_S)
        await alice.send("stop", b"q-2", expiry_s=1)
        await until(lambda: bridge.counters.received == 2, "the stop received")
        await asyncio.sleep(1.5)  # its interval passes while the hold is still executing
        service.release.set()
        [late] = await alice.reply(b"q-2")
    assert late["accepted"] is False
    assert "expired" in late["reason"]
    assert service.executed == [("alice", "hold", {})]
    assert bridge.counters.expired == 1
    assert [e.action for e in audited(audit, "expired")] == ["stop"]
