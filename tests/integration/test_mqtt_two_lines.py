"""Issue 11: two controllers for two lines (line1, line2) on one broker, no cross-talk.

Each bridge has its own client id, topic space and commands: a command for one line acts on that
line only and is answered there; state, events and telemetry arrive on each line's own topics."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack

from controller.service.mqtt import MqttBridge
from tests.integration.mosquitto_fixture import MosquittoBroker
from tests.integration.test_mqtt import DEADLINE_S, FakeService, Watcher, settings_for
from tests.integration.test_mqtt_commands import request_properties


class LineService(FakeService):
    def __init__(self, line: str) -> None:
        super().__init__()
        self.line = line


async def test_two_lines_on_one_broker_never_act_on_each_other(
        mosquitto: MosquittoBroker) -> None:
    services = {line: LineService(line) for line in ("line1", "line2")}
    async with AsyncExitStack() as stack:
        bridges = {line: await stack.enter_async_context(
                       MqttBridge(service, settings_for(mosquitto)))
                   for line, service in services.items()}
        for bridge in bridges.values():
            await asyncio.wait_for(bridge.wait_connected(), DEADLINE_S)
        plant = await stack.enter_async_context(Watcher(mosquitto, "alice", "povd/#"))

        # A command for line1 only.
        await plant.client.publish(
            "povd/line1/m1/cmd/alice/hold", b"", qos=1,
            properties=request_properties(b"l1", reply_topic="povd/line1/m1/reply/alice/t"))
        reply = await plant.wait_for(
            lambda: next(iter(plant.payloads("povd/line1/m1/reply/alice/t")), None),
            "line1's reply")
        assert reply["accepted"] is True
        assert services["line1"].executed == [("alice", "hold", {})]
        assert services["line1"].state == "Held"
        assert services["line2"].executed == []
        assert services["line2"].state == "Idle"

        # Each line's event and telemetry on its own topics.
        services["line2"].record("pass", passes_done=7)
        services["line2"].live({"kind": "telemetry", "t": 2.0, "line": "line2"})
        services["line1"].live({"kind": "telemetry", "t": 1.0, "line": "line1"})
        for line in services:
            await plant.wait_for(lambda line=line: plant.payloads(f"povd/{line}/m1/telemetry")
                                 or None, f"{line}'s telemetry")
        await plant.wait_for(lambda: plant.payloads("povd/line2/m1/events") or None,
                             "line2's event")
        await plant.wait_for(
            lambda: next((s for s in plant.payloads("povd/line1/m1/state")
                          if s["state"] == "Held"), None), "line1 Held")

    def on(line: str, leaf: str) -> list[dict[str, object]]:
        return [json.loads(m.payload) for m in plant.seen
                if m.topic.value == f"povd/{line}/m1/{leaf}"]

    assert [e["payload"] for e in on("line1", "events")] == [
        {"from": "Idle", "to": "Held", "cause": "hold by alice"}]
    assert [e["payload"] for e in on("line2", "events")] == [{"passes_done": 7}]
    assert {t["line"] for t in on("line1", "telemetry")} == {"line1"}
    assert {t["line"] for t in on("line2", "telemetry")} == {"line2"}
    assert all(s["state"] == "Idle" for s in on("line2", "state") if "state" in s)
    assert not any(m.topic.value.startswith("povd/line2/m1/reply") for m in plant.seen)
    # Both stayed connected throughout: distinct client ids, no session take-over.
    assert [b.counters.connections for b in bridges.values()] == [1, 1]
