"""The MQTT bridge against a real mosquitto with the plant's password file and ACL.

The controller behind the bridge is a fake ControllerService: an in-memory event log, live
queues, and an ``execute`` that refuses some users and commands with reasons."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import pytest
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.config.line import ConfigError
from controller.service.mqtt import MqttBridge
from controller.service.mqtt_settings import MqttSettings, load_mqtt_settings
from controller.service.protocol import CommandReply, Event
from tests.integration.mosquitto_fixture import CONTROLLER_USER, MosquittoBroker

T = TypeVar("T")
BASE = "povd/l1/m1"
DEADLINE_S = 15.0  # generous: a slow 2-core CI machine
ROLES = {"alice": "operator", "bob": "viewer"}
OPERATOR_COMMANDS = {"hold": "Held", "unhold": "Execute", "stop": "Stopped"}


class FakeService:
    """Implements controller.service.protocol.ControllerService in memory."""

    line = "l1"
    machine = "m1"

    def __init__(self) -> None:
        self.state = "Idle"
        self.mode = "production"
        self.run_id: int | None = None
        self.alarms: list[dict[str, Any]] = []
        self.log: list[Event] = []
        self.queues: list[asyncio.Queue[dict[str, Any]]] = []
        self.executed: list[tuple[str, str, dict[str, Any]]] = []

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "mode": self.mode, "run_id": self.run_id,
                "alarms": list(self.alarms)}

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(256)
        self.queues.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.queues.remove(queue)

    def events_since(self, seq: int, limit: int = 1000) -> list[Event]:
        return [e for e in self.log if e.seq > seq][:limit]

    async def execute(self, user: str, command: str, args: dict[str, Any],
                      session: str | None = None) -> CommandReply:
        self.executed.append((user, command, args))
        role = ROLES.get(user)
        if role is None:
            return CommandReply(command, False, f"unknown user {user!r}", self.state)
        if command not in OPERATOR_COMMANDS:
            return CommandReply(command, False, f"unknown command {command!r}", self.state)
        if role != "operator":
            return CommandReply(command, False, f"role {role} may not {command}", self.state)
        self.transition(OPERATOR_COMMANDS[command], cause=f"{command} by {user}")
        return CommandReply(command, True, None, self.state)

    # -- what the controller would do -------------------------------------------------------
    def live(self, item: dict[str, Any]) -> None:
        for queue in self.queues:
            queue.put_nowait(item)

    def record(self, kind: str, **payload: Any) -> Event:
        event = Event(len(self.log) + 1, kind, time.time(), payload)
        self.log.append(event)
        self.live({"kind": kind if kind in ("state", "pass", "alarm") else "state", **payload})
        return event

    def transition(self, to: str, cause: str) -> None:
        before, self.state = self.state, to
        self.record("state", **{"from": before, "to": to, "cause": cause})


# -- a plant-side client that remembers what it saw -----------------------------------------
class Watcher:
    def __init__(self, broker: MosquittoBroker, user: str, *topics: str) -> None:
        self.client = aiomqtt.Client(broker.host, broker.port, username=user,
                                     password=broker.users[user],
                                     protocol=aiomqtt.ProtocolVersion.V5)
        self.topics = topics
        self.seen: list[aiomqtt.Message] = []
        self._changed = asyncio.Event()
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Watcher:
        await self._stack.enter_async_context(self.client)
        for topic in self.topics:
            await self.client.subscribe(topic, qos=1)
        reader = asyncio.create_task(self._read())
        self._stack.push_async_callback(_cancel, reader)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _read(self) -> None:
        async for message in self.client.messages:
            self.seen.append(message)
            self._changed.set()

    def payloads(self, topic: str) -> list[Any]:
        return [json.loads(m.payload) for m in self.seen
                if m.topic.value == topic]

    async def wait_for(self, found: Callable[[], T | None], what: str) -> T:
        async def poll() -> T:
            while (value := found()) is None:
                self._changed.clear()
                await self._changed.wait()
            return value
        try:
            return await asyncio.wait_for(poll(), DEADLINE_S)
        except TimeoutError:
            raise AssertionError(f"no {what} within {DEADLINE_S} s; saw "
                                 f"{[(m.topic.value, m.payload) for m in self.seen]}") from None


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError, aiomqtt.MqttError):
        await task


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {DEADLINE_S} s")
        await asyncio.sleep(0.01)


def settings_for(broker: MosquittoBroker, **overrides: Any) -> MqttSettings:
    values: dict[str, Any] = {
        "host": broker.host, "port": broker.port, "username": CONTROLLER_USER,
        "password": broker.users[CONTROLLER_USER], "telemetry_hz": 20.0,
        "reconnect_min_s": 0.05, "reconnect_max_s": 0.3, "events_poll_s": 0.1, **overrides}
    return MqttSettings.model_validate(values)


def command_properties(reply_topic: str, correlation: bytes) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ResponseTopic = reply_topic
    properties.CorrelationData = correlation
    return properties


@pytest.fixture
async def bridge_up(mosquitto: MosquittoBroker) -> AsyncIterator[tuple[FakeService, MqttBridge]]:
    service = FakeService()
    async with MqttBridge(service, settings_for(mosquitto)) as bridge:
        await asyncio.wait_for(bridge.wait_connected(), DEADLINE_S)
        yield service, bridge


# -- publishing --------------------------------------------------------------------------------
async def test_state_is_retained_and_marked_offline_on_a_clean_exit(
        mosquitto: MosquittoBroker) -> None:
    service = FakeService()
    async with MqttBridge(service, settings_for(mosquitto)) as bridge:
        await asyncio.wait_for(bridge.wait_connected(), DEADLINE_S)
        # Subscribing after it was published: the broker hands over the retained state.
        async with Watcher(mosquitto, "alice", f"{BASE}/state") as late:
            state = await late.wait_for(
                lambda: next((m for m in late.seen if m.retain), None), "retained state")
        assert json.loads(state.payload) == {
            "state": "Idle", "mode": "production", "run_id": None, "online": True,
            "t": pytest.approx(time.time(), abs=30)}
    async with Watcher(mosquitto, "alice", f"{BASE}/state") as after:
        last = await after.wait_for(lambda: next(iter(after.payloads(f"{BASE}/state")), None),
                                    "state after exit")
    assert last["online"] is False
    assert last["state"] == "Idle"


async def test_telemetry_alarms_and_events_with_increasing_seq(
        mosquitto: MosquittoBroker) -> None:
    async with Watcher(mosquitto, "alice", f"{BASE}/#") as plant:
        service = FakeService()
        async with MqttBridge(service, settings_for(mosquitto)) as bridge:
            await asyncio.wait_for(bridge.wait_connected(), DEADLINE_S)
            service.live({"kind": "telemetry", "t": 1.0, "rf_kw": 50.0})
            service.record("run_start", run_id=7)
            service.transition("Execute", cause="start")
            service.record("pass", layer=1, passes_done=1)
            service.alarms = [{"id": "WATER_LOW", "state": "active"}]
            service.live({"kind": "alarm", "id": "WATER_LOW", "state": "active"})
            service.record("run_end", run_id=7, outcome="complete")

            events = await plant.wait_for(
                lambda: e if len(e := plant.payloads(f"{BASE}/events")) >= 4 else None,
                "four events")
            assert [e["seq"] for e in events] == [1, 2, 3, 4]
            assert [e["kind"] for e in events] == ["run_start", "state", "pass", "run_end"]
            assert events[1]["payload"] == {"from": "Idle", "to": "Execute", "cause": "start"}

            telemetry = await plant.wait_for(
                lambda: next(iter(plant.payloads(f"{BASE}/telemetry")), None), "telemetry")
            assert telemetry == {"t": 1.0, "rf_kw": 50.0}
            alarm = await plant.wait_for(
                lambda: next(iter(plant.payloads(f"{BASE}/alarms")), None), "an alarm change")
            assert alarm == {"id": "WATER_LOW", "state": "active"}
            active = await plant.wait_for(
                lambda: next((a for a in plant.payloads(f"{BASE}/alarms/active")
                              if a["active"]), None), "the active alarms")
            assert active["active"] == [{"id": "WATER_LOW", "state": "active"}]
            await plant.wait_for(
                lambda: True if plant.payloads(f"{BASE}/state")[-1:] and
                plant.payloads(f"{BASE}/state")[-1]["state"] == "Execute" else None,
                "state Execute")
            assert bridge.counters.last_seq == 4
            assert bridge.counters.published >= 7


class CountingService(FakeService):
    """Counts the statuses taken and where the event log is read."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses = 0
        self.log_reads_on: list[int] = []  # thread idents

    def status(self) -> dict[str, Any]:
        self.statuses += 1
        return super().status()

    def events_since(self, seq: int, limit: int = 1000) -> list[Event]:
        self.log_reads_on.append(threading.get_ident())
        return super().events_since(seq, limit)


async def test_each_publishing_pass_takes_one_status_and_reads_the_log_off_the_loop(
        mosquitto: MosquittoBroker) -> None:
    """The service builds its whole status (telemetry snapshot included) each time it is
    asked, and its event log is SQLite: the bridge's passes (every events_poll_s) ask for one
    status each, and read the log on a worker thread, so neither holds the event loop."""
    service = CountingService()
    async with MqttBridge(service, settings_for(mosquitto)) as bridge:
        await asyncio.wait_for(bridge.wait_connected(), DEADLINE_S)
        await asyncio.sleep(1.0)  # about ten passes at events_poll_s 0.1
        # Nothing new to publish: one log read per pass, after the first (the log's head).
        passes, statuses = len(service.log_reads_on) - 1, service.statuses
    assert passes >= 3
    assert statuses == passes
    assert threading.get_ident() not in service.log_reads_on


# -- commands ----------------------------------------------------------------------------------
async def _command(client: aiomqtt.Client, user: str, command: str, payload: bytes,
                   correlation: bytes) -> None:
    await client.publish(f"{BASE}/cmd/{user}/{command}", payload, qos=1,
                         properties=command_properties(f"{BASE}/reply/alice/1", correlation))


async def test_command_round_trip_refusals_and_broker_acl(
        mosquitto: MosquittoBroker, bridge_up: tuple[FakeService, MqttBridge]) -> None:
    service, bridge = bridge_up
    async with Watcher(mosquitto, "alice", f"{BASE}/reply/alice/#") as alice:
        def reply(correlation: bytes) -> dict[str, Any] | None:
            for m in alice.seen:
                if getattr(m.properties, "CorrelationData", None) == correlation:
                    return json.loads(m.payload)  # type: ignore[no-any-return]
            return None

        await _command(alice.client, "alice", "hold", b'{"why": "shift change"}', b"c-1")
        accepted = await alice.wait_for(lambda: reply(b"c-1"), "reply to hold")
        assert accepted["accepted"] is True
        assert accepted["reason"] is None
        assert accepted["state"] == "Held"
        assert service.executed == [("alice", "hold", {"why": "shift change"})]

        # Under bob's name: the broker's ACL drops it, the controller never sees it. Alice's
        # next command, answered, proves the dropped one would have arrived before it.
        await _command(alice.client, "bob", "stop", b'{"spoof": true}', b"c-2")
        await _command(alice.client, "alice", "launch", b"", b"c-3")
        refused = await alice.wait_for(lambda: reply(b"c-3"), "reply to launch")
        assert refused == {"command": "launch", "accepted": False,
                           "reason": "unknown command 'launch'", "state": "Held", "data": {}}
        assert reply(b"c-2") is None
        assert all(user != "bob" for user, _, _ in service.executed)
        assert service.state == "Held"

    # Bob may publish under his own name; the service refuses his role.
    async with Watcher(mosquitto, "bob", f"{BASE}/reply/bob/#") as bob:
        await bob.client.publish(f"{BASE}/cmd/bob/unhold", b"", qos=1,
                                 properties=command_properties(f"{BASE}/reply/bob/x", b"b-1"))
        body = await bob.wait_for(
            lambda: next(iter(bob.payloads(f"{BASE}/reply/bob/x")), None), "bob's reply")
    assert body["accepted"] is False
    assert body["reason"] == "role viewer may not unhold"
    assert bridge.counters.commands == 3
    assert bridge.counters.commands_refused == 2


async def test_malformed_payload_is_refused_with_a_reason_and_logged(
        mosquitto: MosquittoBroker) -> None:
    service = FakeService()
    with structlog.testing.capture_logs() as logs:
        async with (MqttBridge(service, settings_for(mosquitto)) as bridge,
                    Watcher(mosquitto, "alice", f"{BASE}/reply/alice/#") as alice):
            await asyncio.wait_for(bridge.wait_connected(), DEADLINE_S)
            await _command(alice.client, "alice", "hold", b"{not json", b"m-1")
            await _command(alice.client, "alice", "hold", b"[1, 2]", b"m-2")
            await _command(alice.client, "alice", "hold", b"", b"m-3")
            replies = await alice.wait_for(
                lambda: r if len(r := alice.payloads(f"{BASE}/reply/alice/1")) == 3 else None,
                "three replies")
    assert replies[0]["accepted"] is False
    assert replies[0]["reason"].startswith("payload is not JSON")
    assert replies[1]["reason"] == "payload must be a JSON object, not list"
    assert replies[2]["accepted"] is True  # an empty payload means no arguments
    assert service.executed == [("alice", "hold", {})]
    assert bridge.counters.malformed == 2
    malformed = [e for e in logs if e["event"] == "mqtt.command_malformed"]
    assert [e["log_level"] for e in malformed] == ["warning", "warning"]
    assert malformed[0]["user"] == "alice"


async def test_a_reply_topic_outside_the_users_reply_space_is_not_executed(
        mosquitto: MosquittoBroker, bridge_up: tuple[FakeService, MqttBridge]) -> None:
    service, bridge = bridge_up
    async with Watcher(mosquitto, "alice", f"{BASE}/#") as alice:
        await alice.client.publish(
            f"{BASE}/cmd/alice/hold", b"", qos=1,
            properties=command_properties(f"{BASE}/state", b"x"))
        await until(lambda: bridge.counters.malformed == 1, "dropped")
    assert service.executed == []
    assert all(json.loads(m.payload).get("online") is not None
               for m in alice.seen if m.topic.value == f"{BASE}/state")


# -- the broker going away -----------------------------------------------------------------
async def test_broker_restart_republishes_missed_events_in_order(
        mosquitto: MosquittoBroker) -> None:
    service = FakeService()
    service.record("run_start", run_id=1)  # before the bridge: the plant had it already
    async with MqttBridge(service, settings_for(mosquitto)) as bridge:
        await asyncio.wait_for(bridge.wait_connected(), DEADLINE_S)
        assert bridge.counters.last_seq == 1
        async with Watcher(mosquitto, "alice", f"{BASE}/events") as plant:
            service.record("pass", passes_done=1)
            await plant.wait_for(lambda: plant.payloads(f"{BASE}/events") or None, "seq 2")

        await mosquitto.astop()
        await until(lambda: not bridge.counters.connected, "disconnected")
        for n in range(2, 7):
            service.record("pass", passes_done=n)
            service.live({"kind": "telemetry", "t": float(n)})
        reconnects = bridge.counters.reconnects
        await until(lambda: bridge.counters.reconnects >= reconnects + 2, "retrying")
        assert bridge._task is not None
        assert not bridge._task.done()  # the bridge keeps running while the broker is down

        # Back on the same port, but refusing the controller until the plant listens again:
        # events are not retained, so the order of the two connections must be fixed.
        mosquitto.set_password(CONTROLLER_USER, "not-yet")
        await mosquitto.astart()
        async with Watcher(mosquitto, "alice", f"{BASE}/events") as plant:
            mosquitto.set_password(CONTROLLER_USER, mosquitto.users[CONTROLLER_USER])
            mosquitto.reload()
            await asyncio.wait_for(bridge.wait_connected(), DEADLINE_S)
            service.record("run_end", run_id=1)
            events = await plant.wait_for(
                lambda: e if len(e := plant.payloads(f"{BASE}/events")) >= 6 else None,
                "the missed events and a live one")
    assert [e["seq"] for e in events] == [3, 4, 5, 6, 7, 8]
    assert [e["payload"].get("passes_done") for e in events[:4]] == [2, 3, 4, 5]
    assert bridge.counters.connections >= 2


# -- the last will -----------------------------------------------------------------------------
_CHILD = """
import asyncio, sys
from controller.service.mqtt import MqttBridge
from controller.config.line import ConfigError
from controller.service.mqtt_settings import MqttSettings, load_mqtt_settings
from tests.integration.test_mqtt import FakeService

async def main() -> None:
    settings = MqttSettings.model_validate_json(sys.argv[1])
    async with MqttBridge(FakeService(), settings):
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_last_will_marks_the_machine_offline_when_the_controller_dies(
        mosquitto: MosquittoBroker) -> None:
    settings = settings_for(mosquitto).model_dump(mode="json")
    settings["password"] = mosquitto.users[CONTROLLER_USER]  # model_dump masks secrets
    root = Path(__file__).resolve().parents[2]
    async with Watcher(mosquitto, "alice", f"{BASE}/state") as plant:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(settings)], cwd=root,
                                 env={**os.environ, "PYTHONPATH": str(root)})
        try:
            await plant.wait_for(
                lambda: True if any(p["online"] for p in plant.payloads(f"{BASE}/state"))
                else None, "the child online")
            # SIGKILL: no DISCONNECT, no offline state; only the broker's will can say it.
            child.send_signal(signal.SIGKILL)
            await plant.wait_for(
                lambda: True if plant.payloads(f"{BASE}/state")[-1] == {"online": False}
                else None, "the last will")
        finally:
            child.kill()
            await asyncio.to_thread(child.wait, 10)
    async with Watcher(mosquitto, "alice", f"{BASE}/state") as late:
        retained = await late.wait_for(lambda: next(iter(late.seen), None), "retained will")
    assert retained.retain
    assert json.loads(retained.payload) == {"online": False}


def test_settings_load_from_yaml_and_errors_name_the_field(tmp_path: Path) -> None:
    good = tmp_path / "mqtt.yaml"
    good.write_text("host: broker.plant\nport: 8883\ntls: true\npassword: s3cret\n")
    settings = load_mqtt_settings(good)
    assert (settings.host, settings.port, settings.tls) == ("broker.plant", 8883, True)
    assert settings.resolved_password() == "s3cret"
    assert "s3cret" not in repr(settings)
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: 0\nline: a/b\n")
    with pytest.raises(ConfigError) as caught:
        load_mqtt_settings(bad)
    assert any(e.startswith("port:") for e in caught.value.errors)
