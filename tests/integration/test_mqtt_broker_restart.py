"""Issue 11: the broker restarting mid-run loses, duplicates and reorders no event on MQTT.

A run's worth of events is recorded continuously (one every few milliseconds) while mosquitto,
with persistence on as on the line PC (deploy/mosquitto/povd.conf), is stopped and started
twice. The plant is a historian with a persistent session (QoS 1, clean start only the first
time), reconnecting by itself; the broker refuses the controller until the historian is back
(events are published to whoever listens; that the broker queues them for an absent session is
the broker's part, not the bridge's). What it receives is compared with the durable log, raw: no
de-duplication by ``seq`` on the consumer's side. The counts are in the test's output
(``-s``) for docs/reliability.md.

What the bridge guarantees: an event counts as published once the broker acknowledges it
(PUBACK), in order, and after a reconnect it resumes after the last acknowledged one. What it
cannot: mosquitto 2.0.11 at times acknowledges a publish while it terminates and then neither
delivers nor saves it (seen in about 1 run in 5 here, 1 to 11 events). Those are visible to the
plant as a gap in ``seq`` (filled from the records); the test allows a loss only among them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.service.mqtt import MqttBridge
from tests.integration.mosquitto_fixture import CONTROLLER_USER, MosquittoBroker
from tests.integration.test_mqtt import BASE, DEADLINE_S, FakeService, settings_for, until

RESTARTS = 2
EVENTS_BETWEEN = 60  # the historian sees this many new events before each restart and after
EVENT_PERIOD_S = 0.005


class Historian:
    """A plant consumer that keeps its session across the broker's restarts."""

    def __init__(self, broker: MosquittoBroker) -> None:
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.SessionExpiryInterval = 600
        # One client object for every connection: clean start on the first one only.
        self.client = aiomqtt.Client(
            broker.host, broker.port, username="alice", password=broker.users["alice"],
            identifier="plant-historian", protocol=aiomqtt.ProtocolVersion.V5,
            properties=connect)
        self.seqs: list[int] = []
        self.connections = 0
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                async with self.client:
                    self.subscribed.clear()
                    self.connections += 1
                    await self.client.subscribe(f"{BASE}/events", qos=1)
                    self.subscribed.set()
                    async for message in self.client.messages:
                        self.seqs.append(json.loads(message.payload)["seq"])
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)


async def _produce(service: FakeService) -> None:
    n = 0
    while True:
        n += 1
        service.record("pass", passes_done=n)
        await asyncio.sleep(EVENT_PERIOD_S)


@contextlib.asynccontextmanager
async def _running(coro_fn: Callable[[], object], name: str) -> AsyncIterator[None]:
    task = asyncio.create_task(coro_fn(), name=name)  # type: ignore[arg-type]
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _more_events(historian: Historian, when: str) -> None:
    seen = len(historian.seqs)
    await until(lambda: len(historian.seqs) >= seen + EVENTS_BETWEEN, f"events {when}")


async def test_events_survive_broker_restarts_mid_run_without_loss_duplication_or_reorder(
        persistent_mosquitto: MosquittoBroker) -> None:
    broker = persistent_mosquitto
    service = FakeService()
    historian = Historian(broker)
    acked_in_shutdown: set[int] = set()
    async with _running(historian.run, "historian"):
        await asyncio.wait_for(historian.subscribed.wait(), DEADLINE_S)
        async with MqttBridge(service, settings_for(broker)) as bridge:
            await asyncio.wait_for(bridge.wait_connected(), DEADLINE_S)
            async with _running(lambda: _produce(service), "run"):
                for _ in range(RESTARTS):
                    await _more_events(historian, "before the restart")
                    before = bridge.counters.last_seq
                    await broker.astop()
                    await until(lambda: not bridge.counters.connected, "the bridge cut off")
                    # Acknowledged by the broker while it was terminating (see the docstring).
                    acked_in_shutdown.update(range(before + 1, bridge.counters.last_seq + 1))
                    # The historian back first (a session restored by mosquitto 2.0.11 at
                    # times missed what came in before its owner reconnected: 1 run in 10).
                    broker.set_password(CONTROLLER_USER, "not-yet")
                    connections = historian.connections
                    await broker.astart()
                    await until(lambda n=connections: historian.connections > n
                                and historian.subscribed.is_set(), "the historian back")
                    broker.set_password(CONTROLLER_USER, broker.users[CONTROLLER_USER])
                    broker.reload()
                    await asyncio.wait_for(bridge.wait_connected(), DEADLINE_S)
                await _more_events(historian, "after the restarts")
            last = service.log[-1].seq
            await until(lambda: bridge.counters.last_seq == last, "every event published")
            await until(lambda: last in historian.seqs, "the last event at the historian")

    published = [e.seq for e in service.log]
    lost = sorted(set(published) - set(historian.seqs))
    duplicated = len(historian.seqs) - len(set(historian.seqs))
    figures = (f"broker restarts: {RESTARTS}; events recorded {len(published)}, received "
               f"{len(historian.seqs)}, lost {len(lost)}, duplicated {duplicated}; bridge "
               f"connections {bridge.counters.connections}, historian "
               f"{historian.connections}; acknowledged by the terminating broker "
               f"{sorted(acked_in_shutdown)}, lost {lost}")
    print(f"\n{figures}")  # noqa: T201 - the measured figures, for docs/reliability.md
    assert bridge.counters.connections == RESTARTS + 1
    assert bridge.counters.reconnects > RESTARTS  # refused while the historian came back
    assert historian.connections == RESTARTS + 1
    assert set(lost) <= acked_in_shutdown  # nothing the bridge should have sent again
    assert duplicated == 0
    assert historian.seqs == [seq for seq in published if seq not in lost]  # in order
