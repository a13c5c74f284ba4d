"""`povd serve` as the line PC runs it: a subprocess with its own simulated machine, users
made with `povd users add`, the HTTP API, SIGTERM during a run (hold, then a controlled stop,
every record flushed, exit 0), and the MQTT bridge against a real mosquitto."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import httpx
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.cli.service_client import ClientError, ServiceClient
from controller.records.audit import AuditTrail
from controller.records.run_records import RecordsReader
from controller.records.schema import Outcome, RunDetail
from tests.components import require_tool
from tests.integration.mosquitto_fixture import CONTROLLER_USER, MosquittoBroker, start_broker
from tests.system.rig import RECIPES

pytestmark = pytest.mark.slow

STARTUP_S = 60.0  # povd-sim as a child, links, the idle posture: seconds on a slow machine
EXIT_S = 30.0
T = TypeVar("T")
PASSWORDS = {"olga": "olga-password", "alice": "alice-secret", "bob": "bob-secret"}
ROLES = {"olga": "operator", "alice": "operator", "bob": "viewer"}


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "POVD_DATA_DIR": str(data_dir)}


def add_user(data_dir: Path, name: str) -> None:
    """`povd users add NAME --role R --password-stdin`, as the administrator would."""
    done = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "users", "add", name, "--role", ROLES[name],
         "--password-stdin"],
        input=PASSWORDS[name] + "\n", capture_output=True, text=True, env=_env(data_dir),
        timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr


class Server:
    def __init__(self, proc: subprocess.Popen[str], url: str, data_dir: Path,
                 stdout: Path) -> None:
        self.proc = proc
        self.url = url
        self.data_dir = data_dir
        self.stdout = stdout

    def terminate_and_wait(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=EXIT_S)

    def reader(self) -> RecordsReader:
        return RecordsReader(self.data_dir / "records.sqlite3")


@contextmanager
def serving(tmp_path: Path, *extra: str, time_scale: float = 200) -> Iterator[Server]:
    data_dir = tmp_path / "data"
    url_file = tmp_path / "url"
    stdout = tmp_path / "serve.out"
    url_file.unlink(missing_ok=True)  # a previous server's
    with stdout.open("w") as out, (tmp_path / "serve.err").open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli.main", "serve", "--sim",
             "--time-scale", str(time_scale), "--http", "127.0.0.1:0",
             "--url-file", str(url_file), *extra],
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, text=True, env=_env(data_dir),
        )
        try:
            _wait(lambda: (url_file.exists() and url_file.read_text().startswith("http"))
                  or proc.poll() is not None, STARTUP_S, "the served URL")
            assert proc.poll() is None, (tmp_path / "serve.err").read_text()[-3000:]
            yield Server(proc, url_file.read_text().strip(), data_dir, stdout)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=EXIT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def run_ended(server: Server, run_id: int) -> RunDetail:
    detail = server.reader().get_run(run_id)
    assert detail is not None
    return detail


def test_serve_api_and_a_controlled_stop_on_sigterm(tmp_path: Path) -> None:
    add_user(tmp_path / "data", "olga")
    with serving(tmp_path) as server:
        assert f"at {server.url}" in server.stdout.read_text()
        openapi = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
        assert "/api/commands/{command}" in openapi["paths"]
        with ServiceClient(server.url) as client:
            with pytest.raises(ClientError) as no_login:
                client.status()
            assert no_login.value.status == 401
            with pytest.raises(ClientError):
                client.login("olga", "not-her-password")
            login = client.login("olga", PASSWORDS["olga"])
            assert login["role"] == "operator"
            status = client.status()
            assert status["state"] == "Idle" and status["line"] == "line1"
            assert all(status["links"].values()), status["links"]

            text = (RECIPES / "long.yaml").read_text()
            reply = client.command("start", {"recipe_text": text, "preform_serial": "P-7"})
            assert reply.accepted, reply.reason
            run_id = reply.data["run_id"]

            def depositing() -> bool:
                now = client.status()
                return bool(now["state"] == "Execute" and now["op"] == "deposit")
            _wait(depositing, 60, "deposition")

        assert server.terminate_and_wait() == 0

    detail = run_ended(server, run_id)
    assert detail.run.outcome is Outcome.STOPPED
    assert detail.run.preform_serial == "P-7" and detail.run.operator == "olga"
    commands = [(c.user, c.command, c.accepted) for c in detail.commands]
    assert commands[0] == ("olga", "start", True)
    assert ("system", "hold", True) in commands and ("system", "stop", True) in commands
    assert commands.index(("system", "hold", True)) < commands.index(("system", "stop", True))
    why = {c.command: c.args.get("reason") for c in detail.commands if c.user == "system"}
    assert why == {"hold": "service stopping (SIGTERM)", "stop": "service stopping (SIGTERM)"}
    reached = [s.to_state for s in detail.states]
    assert reached.index("Held") < reached.index("Stopping") < reached.index("Stopped")
    assert server.reader().interrupted_runs() == []
    # The next start finds nothing interrupted and the line lock released.
    with serving(tmp_path) as again:
        with ServiceClient(again.url) as client:
            client.login("olga", PASSWORDS["olga"])
            assert client.status()["interrupted_runs"] == []
        assert again.terminate_and_wait() == 0


def test_sigterm_during_an_operator_stop_lets_the_stop_finish(tmp_path: Path) -> None:
    add_user(tmp_path / "data", "olga")
    # A slower process clock, so the operator's stop (its cool-down) is still going on when
    # the SIGTERM arrives.
    with serving(tmp_path, time_scale=40) as server, ServiceClient(server.url) as client, \
            ServiceClient(server.url) as operator:
        client.login("olga", PASSWORDS["olga"])
        operator.token = client.token
        text = (RECIPES / "long.yaml").read_text()
        run_id = client.command("start", {"recipe_text": text}).data["run_id"]
        _wait(lambda: client.status()["op"] in ("ramp", "deposit"), 60, "the plasma up")
        with ThreadPoolExecutor(1) as pool:
            stop = pool.submit(operator.command, "stop", {"reason": "end of shift"})
            _wait(lambda: client.status()["state"] == "Stopping", 30, "Stopping")
            assert server.terminate_and_wait() == 0
            assert stop.result(timeout=EXIT_S).accepted
    detail = run_ended(server, run_id)
    assert detail.run.outcome is Outcome.STOPPED
    assert "Aborting" not in [s.to_state for s in detail.states]
    assert [(c.user, c.command) for c in detail.commands if c.accepted] == [
        ("olga", "start"), ("olga", "stop")]


# -- MQTT ------------------------------------------------------------------------------------
BASE = "povd/line1/povd1"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    require_tool("mosquitto", "mosquitto_passwd", package="mosquitto")
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    started = start_broker(workdir, users={CONTROLLER_USER: "controller-secret",
                                           "alice": PASSWORDS["alice"],
                                           "bob": PASSWORDS["bob"]})
    try:
        yield started
    finally:
        started.stop()


def _request(reply_topic: str, correlation: bytes) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call] # paho
    properties.ResponseTopic = reply_topic
    properties.CorrelationData = correlation
    return properties


class Plant:
    """A plant-side MQTT 5 client under one user's name, remembering what it saw."""

    def __init__(self, broker: MosquittoBroker, user: str) -> None:
        self.user = user
        self.client = aiomqtt.Client(broker.host, broker.port, username=user,
                                     password=broker.users[user],
                                     protocol=aiomqtt.ProtocolVersion.V5)
        self.seen: list[aiomqtt.Message] = []

    async def read(self) -> None:
        async for message in self.client.messages:
            self.seen.append(message)

    def states(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.seen if m.topic.value == f"{BASE}/state"
                and isinstance(m.payload, bytes | bytearray)]

    def reply(self, correlation: bytes) -> dict[str, Any] | None:
        for m in self.seen:
            if getattr(m.properties, "CorrelationData", None) == correlation:
                body: dict[str, Any] = json.loads(m.payload)
                return body
        return None

    async def command(self, command: str, args: dict[str, Any], correlation: bytes
                      ) -> dict[str, Any]:
        await self.client.publish(
            f"{BASE}/cmd/{self.user}/{command}", json.dumps(args).encode(), qos=1,
            properties=_request(f"{BASE}/reply/{self.user}/test", correlation))
        return await until(lambda: self.reply(correlation), f"reply to {command}")


async def until(found: Callable[[], T | None], what: str, timeout_s: float = 20) -> T:
    deadline = time.monotonic() + timeout_s
    while (value := found()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        await asyncio.sleep(0.02)
    return value


async def test_serve_with_the_mqtt_bridge(tmp_path: Path, broker: MosquittoBroker) -> None:
    for name in ("alice", "bob"):
        await asyncio.to_thread(add_user, tmp_path / "data", name)
    settings = tmp_path / "mqtt.yaml"
    settings.write_text(json.dumps({
        "host": broker.host, "port": broker.port, "username": CONTROLLER_USER,
        "password": "controller-secret", "telemetry_hz": 5, "events_poll_s": 0.1,
        "reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
    }))
    with serving(tmp_path, "--mqtt-config", str(settings)) as server:
        alice, bob = Plant(broker, "alice"), Plant(broker, "bob")
        async with alice.client, bob.client, asyncio.TaskGroup() as tg:
            await alice.client.subscribe(f"{BASE}/state", qos=1)
            await alice.client.subscribe(f"{BASE}/reply/alice/#", qos=1)
            await bob.client.subscribe(f"{BASE}/reply/bob/#", qos=1)
            readers = [tg.create_task(p.read()) for p in (alice, bob)]

            # The retained state: the service is online, idle.
            online = await until(lambda: next((s for s in alice.states() if s["online"]),
                                              None), "the online state")
            assert online["state"] == "Idle" and online["mode"] == "production"

            ack = await alice.command("ack", {"alarm_id": "link_gauge"}, b"a-1")
            assert ack["accepted"] is True and ack["state"] == "Idle"
            hold = await alice.command("hold", {}, b"a-2")
            assert hold["accepted"] is False and "Idle" in hold["reason"]
            viewer = await bob.command("hold", {}, b"b-1")
            assert viewer == {"command": "hold", "accepted": False, "state": "Idle",
                              "reason": "role viewer may not hold (needs operator or engineer)",
                              "data": {}}

            exit_code = await asyncio.to_thread(server.terminate_and_wait)
            assert exit_code == 0
            # A clean exit leaves the retained state saying offline.
            await until(lambda: True if alice.states()[-1]["online"] is False else None,
                        "the offline state")
            for reader in readers:
                reader.cancel()

    # Every MQTT command and refusal is in the records like any other.
    events = RecordsReader(tmp_path / "data" / "records.sqlite3").events_since(0)
    recorded = [(e.payload["user"], e.payload["command"], e.payload["accepted"])
                for e in events if e.kind == "command"]
    assert recorded == [("alice", "ack", True), ("alice", "hold", False),
                        ("bob", "hold", False)]
    # ... and in the audit trail, as a command over HTTP is: the role check and the audit are
    # the service's, whatever the channel.
    with AuditTrail(tmp_path / "data" / "audit.sqlite3") as audit:
        audited = [(e.user, e.action, e.outcome) for e in audit.entries()
                   if e.action in ("ack", "hold")]
        assert audit.verify().ok
    assert audited == [("alice", "ack", "accepted"), ("alice", "hold", "refused"),
                       ("bob", "hold", "refused")]
