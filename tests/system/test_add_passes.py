"""The operator's extra passes over a whole simulated line (issue 9): added through the service
while the layers recipe deposits (6 + 7 + 7 passes, extra_passes [0, 6] on each layer), the run
makes them and completes; refused with the reason for a layer already made, too many passes
or a role that may not; recorded (the command, the layer's extra passes as a setpoint, the
audit trail); reachable over HTTP and over MQTT (a real mosquitto)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import httpx
import pytest
from argon2 import PasswordHasher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.records.audit import AuditTrail
from controller.records.run_records import PassRecord
from controller.safety.states import State
from controller.service.api import create_app
from controller.service.line_service import LineService
from controller.service.mqtt import MqttBridge
from controller.service.mqtt_settings import MqttSettings
from controller.service.users import TokenIssuer, UserStore
from tests.components import require_tool
from tests.integration.mosquitto_fixture import (
    CONTROLLER_USER,
    DEFAULT_USERS,
    MosquittoBroker,
    start_broker,
)
from tests.system.rig import RECIPES, Rig, line_rig

pytestmark = pytest.mark.slow

T = TypeVar("T")
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
LAYERS = (RECIPES / "layers.yaml").read_text()
PLANNED = {0: 6, 1: 7, 2: 7}  # passes per layer in layers.yaml
OPERATOR, VIEWER = "alice", "bob"  # the broker's users too
TIMEOUT_S = 60.0


def _users(tmp_path: Path) -> UserStore:
    store = UserStore(tmp_path / "users.json", hasher=FAST)
    store.add(OPERATOR, DEFAULT_USERS[OPERATOR], "operator")
    store.add(VIEWER, DEFAULT_USERS[VIEWER], "viewer")
    return store


async def _start_depositing(rig: Rig, service: LineService) -> None:
    reply = await service.execute(OPERATOR, "start", {"recipe_text": LAYERS})
    assert reply.accepted, reply.reason
    await rig.wait_depositing(passes_done=1)


def _made_per_layer(passes: list[PassRecord]) -> dict[int, int]:
    """The passes each layer made, from the run's pass numbers (a layer's last less the layer
    before's): a hold at a pass boundary can leave one pass counted but unrecorded (the
    executor cancelled between counting it and recording it), which does not change this."""
    last: dict[int, int] = {}
    for record in passes:
        last[record.layer] = max(last.get(record.layer, 0), record.pass_index)
    made, before = {}, 0
    for layer in sorted(last):
        made[layer], before = last[layer] - before, last[layer]
    return made


async def _abort(rig: Rig, service: LineService) -> None:
    reply = await service.execute(OPERATOR, "abort", {"reason": "test over"})
    assert reply.accepted, reply.reason
    await rig.wait_state(State.ABORTED, timeout_s=TIMEOUT_S)


# -- the run makes the passes added -------------------------------------------------------------
async def test_passes_added_while_depositing_are_made_and_the_run_completes(
        tmp_path: Path) -> None:
    async with line_rig(tmp_path) as rig:
        service = LineService(rig.sup, _users(tmp_path), rig.db)
        await _start_depositing(rig, service)
        # Into the current layer (the inner one, one pass or so made), and into the last.
        current = await service.execute(OPERATOR, "add_passes", {"passes": 2})
        assert current.accepted, current.reason
        assert current.data == {"layer": 0, "label": "inner", "planned": 6, "extra": 2,
                                "passes": 8, "extra_max": 6, "done": current.data["done"]}
        later = await service.execute(OPERATOR, "add_passes", {"layer": 2, "passes": 1})
        assert later.accepted, later.reason
        assert (later.data["layer"], later.data["extra"], later.data["passes"]) == (2, 1, 8)

        too_many = await service.execute(OPERATOR, "add_passes", {"layer": 2, "passes": 6})
        assert not too_many.accepted
        assert too_many.reason == ("layer 2 (outer): the recipe allows 6 extra passes, 1 "
                                   "already added; 6 more would exceed it")
        viewer = await service.execute(VIEWER, "add_passes", {"passes": 1})
        assert not viewer.accepted and viewer.refused_by == "role"
        assert viewer.reason == "role viewer may not add_passes (needs operator or engineer)"
        status = service.status()["layer"]
        assert status is not None and status["layer"] in (0, 1)

        await rig.wait_for(lambda: (ex := rig.sup.executor) is not None
                           and ex.cursor.layer >= 1, TIMEOUT_S, "the middle layer")
        made = await service.execute(OPERATOR, "add_passes", {"layer": 0, "passes": 1})
        assert not made.accepted
        assert made.reason is not None and made.reason.startswith(
            "layer 0 (inner) has made its passes")

        await asyncio.wait_for(rig.sup.finished.wait(), TIMEOUT_S)
        assert rig.sup.sm.state is State.COMPLETE, rig.sup.outcome_reason
        await rig.sup.record_flush()
        run_id = rig.sup.run_id
        assert run_id is not None
        detail = rig.reader().get_run(run_id)
        assert detail is not None
        per_layer = Counter(p.layer for p in detail.passes)
        assert per_layer == {0: PLANNED[0] + 2, 1: PLANNED[1], 2: PLANNED[2] + 1}, per_layer
        commands = [(c.user, c.args.get("layer"), c.accepted, c.reason)
                    for c in detail.commands if c.command == "add_passes"]
        assert commands == [(OPERATOR, 0, True, None), (OPERATOR, 2, True, None),
                            (OPERATOR, 2, False, too_many.reason),
                            (VIEWER, None, False, viewer.reason),
                            (OPERATOR, 0, False, made.reason)]
        extra = [(s.device, s.quantity, s.value, s.source) for s in detail.setpoints
                 if s.quantity.startswith("extra_passes")]
        assert extra == [("carriage", "extra_passes_layer_0", 2.0, f"add_passes:{OPERATOR}"),
                         ("carriage", "extra_passes_layer_2", 1.0, f"add_passes:{OPERATOR}")]


# -- over HTTP ----------------------------------------------------------------------------------
async def test_add_passes_over_http_while_held_then_made(tmp_path: Path) -> None:
    users = _users(tmp_path)
    audit = AuditTrail(tmp_path / "audit.sqlite3")
    async with line_rig(tmp_path) as rig:
        service = LineService(rig.sup, users, rig.db, audit)
        app = create_app(service, users, TokenIssuer(users, ttl_s=3600), audit, rig.line,
                         records_path=rig.db)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://povd") as http:
            tokens = {name: (await http.post("/api/login", json={
                "username": name, "password": DEFAULT_USERS[name]})).json()["token"]
                for name in (OPERATOR, VIEWER)}

            async def post(user: str, command: str, args: dict[str, Any]) -> httpx.Response:
                return await http.post(f"/api/commands/{command}", json={"args": args},
                                       headers={"Authorization": f"Bearer {tokens[user]}"})

            await _start_depositing(rig, service)
            assert (await post(OPERATOR, "hold", {})).status_code == 200
            await rig.wait_state(State.HELD, timeout_s=TIMEOUT_S)
            layer = rig.sup.executor.cursor.layer if rig.sup.executor else None

            added = await post(OPERATOR, "add_passes", {"passes": 3})
            assert added.status_code == 200, added.text
            assert added.json()["accepted"] is True and added.json()["state"] == "Held"
            assert (added.json()["data"]["layer"], added.json()["data"]["extra"]) == (layer, 3)
            # A crash while held must not lose them: the last checkpoint carries them.
            await rig.sup.record_flush()
            checkpoint = rig.reader().last_checkpoint(rig.sup.run_id or 0)
            assert checkpoint is not None
            assert checkpoint.state["extra_passes"] == {str(layer): 3}
            too_many = await post(OPERATOR, "add_passes", {"passes": 4})
            assert too_many.status_code == 409
            assert "the recipe allows 6 extra passes, 3 already added" in too_many.json()["reason"]
            not_whole = await post(OPERATOR, "add_passes", {"passes": 1.5})
            assert not_whole.status_code == 409
            assert not_whole.json()["reason"] == "passes must be a whole number, not 1.5"
            assert (await post(VIEWER, "add_passes", {"passes": 1})).status_code == 403
            status = await http.get("/api/status",
                                    headers={"Authorization": f"Bearer {tokens[VIEWER]}"})
            assert status.json()["layer"]["extra"] == 3
            assert status.json()["cursor"]["extra_passes"] == {str(layer): 3}

            # Unheld, the run makes them.
            assert (await post(OPERATOR, "unhold", {})).status_code == 200
            await asyncio.wait_for(rig.sup.finished.wait(), TIMEOUT_S)
            assert rig.sup.sm.state is State.COMPLETE, rig.sup.outcome_reason
            await rig.sup.record_flush()
            assert rig.sup.run_id is not None
            detail = rig.reader().get_run(rig.sup.run_id)
            assert detail is not None
            assert layer is not None
            made = _made_per_layer(detail.passes)
            assert made == {i: n + (3 if i == layer else 0) for i, n in PLANNED.items()}, made
    outcomes = [(e.user, e.outcome) for e in audit.entries() if e.action == "add_passes"]
    audit.close()
    assert outcomes == [(OPERATOR, "accepted"), (OPERATOR, "refused"), (OPERATOR, "refused"),
                        (VIEWER, "refused")]


# -- over MQTT ----------------------------------------------------------------------------------
@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    require_tool("mosquitto", "mosquitto_passwd", package="mosquitto")
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    started = start_broker(workdir)
    try:
        yield started
    finally:
        started.stop()


async def _until(found: Callable[[], T | None], what: str) -> T:
    async def poll() -> T:
        while (value := found()) is None:
            await asyncio.sleep(0.02)
        return value
    try:
        return await asyncio.wait_for(poll(), TIMEOUT_S)
    except TimeoutError:
        raise AssertionError(f"no {what} within {TIMEOUT_S} s") from None


class Requester:
    """A plant-side MQTT 5 client: a command under its own name, its reply by correlation."""

    def __init__(self, broker: MosquittoBroker, user: str, base: str) -> None:
        self.user, self.base = user, base
        self.client = aiomqtt.Client(broker.host, broker.port, username=user,
                                     password=broker.users[user],
                                     protocol=aiomqtt.ProtocolVersion.V5)
        self.replies: dict[bytes, dict[str, Any]] = {}

    async def read(self) -> None:
        async for message in self.client.messages:
            correlation = getattr(message.properties, "CorrelationData", None)
            if correlation is not None and isinstance(message.payload, bytes | bytearray):
                self.replies[bytes(correlation)] = json.loads(message.payload)

    async def command(self, command: str, args: dict[str, Any], tag: bytes) -> dict[str, Any]:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call] # paho
        properties.ResponseTopic = f"{self.base}/reply/{self.user}/test"
        properties.CorrelationData = tag
        await self.client.publish(f"{self.base}/cmd/{self.user}/{command}",
                                  json.dumps(args).encode(), qos=1, properties=properties)
        return await _until(lambda: self.replies.get(tag), f"reply to {command}")


@pytest.fixture
async def bridged(tmp_path: Path, broker: MosquittoBroker
                  ) -> AsyncIterator[tuple[Rig, LineService, MqttBridge]]:
    async with line_rig(tmp_path) as rig:
        service = LineService(rig.sup, _users(tmp_path), rig.db)
        settings = MqttSettings.model_validate({
            "host": broker.host, "port": broker.port, "username": CONTROLLER_USER,
            "password": broker.users[CONTROLLER_USER], "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.3, "events_poll_s": 0.1})
        async with MqttBridge(service, settings) as bridge:
            await asyncio.wait_for(bridge.wait_connected(), TIMEOUT_S)
            yield rig, service, bridge


async def test_add_passes_over_mqtt_while_depositing(
        broker: MosquittoBroker, bridged: tuple[Rig, LineService, MqttBridge]) -> None:
    rig, service, bridge = bridged
    base = bridge.topics.base
    alice, bob = Requester(broker, OPERATOR, base), Requester(broker, VIEWER, base)
    async with alice.client, bob.client, asyncio.TaskGroup() as tg:
        for requester in (alice, bob):
            await requester.client.subscribe(f"{base}/reply/{requester.user}/#", qos=1)
        readers = [tg.create_task(r.read()) for r in (alice, bob)]
        await _start_depositing(rig, service)
        # The last layer: still to come however far the run has got meanwhile.
        added = await alice.command("add_passes", {"layer": 2, "passes": 2}, b"a-1")
        assert added["accepted"] is True, added
        assert (added["data"]["layer"], added["data"]["extra"], added["data"]["passes"]) == (
            2, 2, 9)
        refused = await bob.command("add_passes", {"layer": 2, "passes": 1}, b"b-1")
        assert refused["accepted"] is False
        assert refused["reason"] == "role viewer may not add_passes (needs operator or engineer)"
        executor = rig.sup.executor
        assert executor is not None and executor.cursor.extra_for(2) == 2
        await _abort(rig, service)
        for reader in readers:
            reader.cancel()
