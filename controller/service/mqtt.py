"""The MQTT bridge: the controller seen and commanded by the plant's systems (issue 4).

``MqttBridge(service, settings)`` is an async context manager: entering starts its task and
returns at once (the broker may be down; the controller runs regardless); leaving publishes the
machine offline, disconnects and cancels everything it started. ``run()`` is the same loop for
a caller that prefers to own the task itself (stop it with ``stop()`` or by cancelling).

Per connection: subscribe to commands, publish ``state`` (retained; the last will marks the
machine offline if the controller dies), ``alarms`` / ``alarms/active``, every durable event the
plant has not seen yet, then telemetry at ``telemetry_hz``. aiomqtt does not reconnect by itself:
the loop here does, with exponential backoff. Events are published from the durable log
(``events_since(last_seq)``), woken by live items and polled, so each carries its ``seq`` and
nothing is skipped across a broker outage (at least once: a consumer dedupes by ``seq``).

Commands (issue 11): each is answered once and executed at most once. A retained command is
refused, audited and cleared from the broker (it would come back at every subscription); a
request id seen before (the correlation data, per user and response topic, within the
``RequestMemory``'s bounds) gets its first reply again; a command whose Message Expiry Interval
runs out before its turn (behind a slow one) is refused. Every refusal made here, before the
service, is audited as the service's gate audits its own; the service's refusals are its gate's.
Messages are stamped as they arrive, so the expiry is judged from then, not from their turn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from controller.records.audit import AuditError, AuditTrail
from controller.service.mqtt_commands import (
    CommandRequest,
    Rejected,
    ReplyTo,
    RequestMemory,
    Unanswerable,
    parse_command,
    refusal,
    reply_message,
)
from controller.service.mqtt_settings import MqttSettings, Topics
from controller.service.protocol import CommandReply, ControllerService

_EVENTS_PAGE = 200
_ALARM_BACKLOG = 1000  # alarm changes kept while the broker is away; the oldest go first
_STOP_TIMEOUT_S = 3.0  # for the offline state and DISCONNECT on the way out
_PUBLISH_TIMEOUT_S = 5.0
_INBOX = 1000  # commands received and waiting for their turn (aiomqtt's own queue is as long)
_AUDIT_EXCERPT = 200  # characters of a refused message's topic and payload kept in the audit


@dataclass
class BridgeCounters:
    """For observability (the lead's status endpoint, logs, tests)."""

    published: int = 0
    connections: int = 0
    reconnects: int = 0  # connections lost or refused, each followed by a backoff
    received: int = 0  # every message on the command topics
    commands: int = 0  # command messages from a user (accepted, refused or malformed)
    commands_refused: int = 0
    malformed: int = 0
    retained: int = 0  # retained commands refused (and cleared)
    duplicates: int = 0  # request ids seen before: answered again, not executed
    expired: int = 0  # Message Expiry Interval past before their turn
    errors: int = 0  # unexpected exceptions survived by the reconnect loop
    last_seq: int = 0
    connected: bool = False


def _dumps(value: Any) -> bytes:
    return json.dumps(value, default=str, separators=(",", ":")).encode()


class MqttBridge:
    def __init__(self, service: ControllerService, settings: MqttSettings, *,
                 resume_after: int | None = None, audit: AuditTrail | None = None) -> None:
        """``resume_after``: the last event seq the plant has; None starts at the log's end.
        ``audit``: where the refusals made by the bridge itself are recorded."""
        self.service = service
        self.settings = settings
        self.audit = audit
        self._requests = RequestMemory(settings.dedupe_requests, settings.dedupe_window_s)
        line = settings.line or service.line
        machine = settings.machine or service.machine
        self.topics = Topics.for_machine(settings.topic_root, line, machine)
        self.counters = BridgeCounters()
        self._client_id = settings.client_id or f"povd-controller-{line}-{machine}"
        self._log = structlog.get_logger("controller.service.mqtt").bind(
            broker=f"{settings.host}:{settings.port}", base=self.topics.base)
        self._resume_after = resume_after
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # What the live queue told us, kept across connections.
        self._latest_telemetry: dict[str, Any] | None = None
        self._latest_progress: dict[str, Any] | None = None
        self._alarm_changes: deque[dict[str, Any]] = deque(maxlen=_ALARM_BACKLOG)
        # What this connection has published of the retained topics (None: not yet).
        self._sent_state: dict[str, Any] | None = None
        self._sent_active: list[Any] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        assert self._task is None, "an MqttBridge is entered once"
        self._task = asyncio.create_task(self.run(), name=f"mqtt-bridge {self.topics.base}")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self.stop()
        try:
            # A graceful end publishes the offline state; a dead broker must not hold us up.
            await asyncio.wait_for(asyncio.shield(task), _STOP_TIMEOUT_S)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def stop(self) -> None:
        """Ask ``run()`` to publish the offline state, disconnect and return."""
        self._stopping.set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def run(self) -> None:
        queue = self.service.subscribe()
        try:
            last = self._resume_after
            self.counters.last_seq = (await asyncio.to_thread(self._head_seq) if last is None
                                      else last)
            async with asyncio.TaskGroup() as tg:
                live = tg.create_task(self._consume_live(queue), name="mqtt-live")
                await self._connect_loop()
                live.cancel()
        finally:
            self.service.unsubscribe(queue)

    def _head_seq(self) -> int:
        seq = 0
        while page := self.service.events_since(seq, limit=1000):
            seq = page[-1].seq
        return seq

    # -- connection --------------------------------------------------------------------------
    def _client(self) -> aiomqtt.Client:
        s = self.settings
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call] # paho: untyped
        connect.SessionExpiryInterval = s.session_expiry_s
        return aiomqtt.Client(
            s.host, s.port, username=s.username, password=s.resolved_password(),
            identifier=self._client_id, protocol=aiomqtt.ProtocolVersion.V5,
            keepalive=s.keepalive_s, timeout=_PUBLISH_TIMEOUT_S,
            tls_context=ssl.create_default_context() if s.tls else None,
            # Plain {"online": false}: what the plant sees if we vanish without a DISCONNECT.
            will=aiomqtt.Will(self.topics.state, _dumps({"online": False}), qos=1, retain=True),
            max_queued_incoming_messages=_INBOX,
            # A kept session is resumed (its queued commands, still within their expiry).
            clean_start=s.session_expiry_s == 0, properties=connect,
        )

    async def _connect_loop(self) -> None:
        delay = self.settings.reconnect_min_s
        while not self._stopping.is_set():
            try:
                async with self._client() as client:
                    self._on_connected()
                    delay = self.settings.reconnect_min_s
                    await self._session(client)
                return  # the session ends only when asked to stop
            except aiomqtt.MqttError as exc:
                self._log.warning("mqtt.disconnected", error=str(exc), retry_in_s=delay)
            except Exception:
                # A bug here must not take the bridge (or the controller) down: log, back off.
                self.counters.errors += 1
                self._log.exception("mqtt.session_failed", retry_in_s=delay)
            finally:
                self._connected.clear()
                self.counters.connected = False
            self.counters.reconnects += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, self.settings.reconnect_max_s)

    def _on_connected(self) -> None:
        self.counters.connections += 1
        self.counters.connected = True
        # The broker may have lost the retained topics (persistence off, a new broker).
        self._sent_state = self._sent_active = None
        self._wake.set()
        self._log.info("mqtt.connected", last_seq=self.counters.last_seq)

    async def _session(self, client: aiomqtt.Client) -> None:
        # Retain as published: a retained command shows as one even when it arrives live. No
        # local: the bridge's own clearing of a retained command does not come back to it.
        options = SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True)
        await client.subscribe(self.topics.commands, options=options)
        self._connected.set()  # connected means listening: a command sent now is heard
        inbox: asyncio.Queue[tuple[float, aiomqtt.Message]] = asyncio.Queue(_INBOX)
        try:
            async with asyncio.TaskGroup() as tg:
                workers = [
                    tg.create_task(self._receive_commands(client, inbox), name="mqtt-inbox"),
                    tg.create_task(self._serve_commands(client, inbox), name="mqtt-commands"),
                    tg.create_task(self._publish_changes(client), name="mqtt-changes"),
                    tg.create_task(self._publish_telemetry(client), name="mqtt-telemetry"),
                ]
                await self._stopping.wait()
                for worker in workers:
                    worker.cancel()
        except BaseExceptionGroup as group:
            # One lost connection fails every worker; report it once, as the MqttError it is.
            mqtt_errors = group.subgroup(aiomqtt.MqttError)
            if mqtt_errors is not None:
                raise _first(mqtt_errors) from group
            raise
        await self._publish_state(client, online=False)

    async def _publish(self, client: aiomqtt.Client, topic: str, payload: bytes, *,
                       qos: int = 1, retain: bool = False, properties: Any = None) -> None:
        await client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        self.counters.published += 1

    # -- live items ----------------------------------------------------------------------------
    async def _consume_live(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        """Runs across connections, so the service's bounded queue never backs up; telemetry
        keeps only the latest sample (a stale one is no use to the plant)."""
        while True:
            item = await queue.get()
            kind = item.get("kind")
            if kind == "telemetry":
                self._latest_telemetry = item
                continue
            if kind == "progress":
                self._latest_progress = item
                continue
            if kind == "alarm":
                self._alarm_changes.append(item)
            # A state change, a pass or an alarm usually has a durable event behind it.
            self._wake.set()

    async def _publish_telemetry(self, client: aiomqtt.Client) -> None:
        period = 1.0 / self.settings.telemetry_hz
        loop = asyncio.get_running_loop()
        due = loop.time()
        sent: dict[str, Any] | None = None
        while True:
            sample = self._latest_telemetry
            if sample is not None and sample is not sent:
                body = {k: v for k, v in sample.items() if k != "kind"}
                body.setdefault("t", time.time())
                if self._latest_progress is not None:
                    body["progress"] = {k: v for k, v in self._latest_progress.items()
                                        if k != "kind"}
                await self._publish(client, self.topics.telemetry, _dumps(body), qos=0)
                sent = sample
            due += period
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def _publish_changes(self, client: aiomqtt.Client) -> None:
        """State, alarms and events in one task, so their order on the wire is the order here."""
        while True:
            self._wake.clear()
            # One status for the pass: the service builds the whole of it, telemetry snapshot
            # included, each time it is asked. An alarm that changes while this pass publishes
            # sets _wake, so the next pass, at once, sends the active list with it.
            status = self.service.status()
            await self._publish_state(client, online=True, status=status)
            while self._alarm_changes:
                change = {k: v for k, v in self._alarm_changes[0].items() if k != "kind"}
                await self._publish(client, self.topics.alarms, _dumps(change))
                self._alarm_changes.popleft()  # only once the broker has it
            await self._publish_active_alarms(client, status)
            await self._publish_events(client)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.events_poll_s)

    async def _publish_state(self, client: aiomqtt.Client, *, online: bool,
                             status: dict[str, Any] | None = None) -> None:
        if status is None:
            status = self.service.status()
        state = {"state": status.get("state"), "mode": status.get("mode"),
                 "run_id": status.get("run_id"), "online": online}
        if state == self._sent_state:
            return
        await self._publish(client, self.topics.state, _dumps({**state, "t": time.time()}),
                            retain=True)
        self._sent_state = state

    async def _publish_active_alarms(self, client: aiomqtt.Client,
                                     status: dict[str, Any]) -> None:
        active = list(status.get("alarms") or [])
        if active == self._sent_active:
            return
        body = {"active": active, "t": time.time()}
        await self._publish(client, self.topics.alarms_active, _dumps(body), retain=True)
        self._sent_active = active

    async def _publish_events(self, client: aiomqtt.Client) -> None:
        # On a worker thread: the service reads its durable log from SQLite (a connection
        # opened, queried and closed), twice a second even when nothing is new, and on the
        # event loop that read was the bridge's longest callback (about a millisecond).
        while events := await asyncio.to_thread(self.service.events_since,
                                                self.counters.last_seq, _EVENTS_PAGE):
            for event in events:
                body = {"seq": event.seq, "kind": event.kind, "t": event.t,
                        "payload": event.payload}
                await self._publish(client, self.topics.events, _dumps(body))
                # Advanced only after the broker's PUBACK: a lost one is sent again.
                self.counters.last_seq = event.seq

    # -- commands ------------------------------------------------------------------------------
    async def _receive_commands(self, client: aiomqtt.Client,
                                inbox: asyncio.Queue[tuple[float, aiomqtt.Message]]) -> None:
        """Stamps each message as it arrives: its expiry runs from then, not from its turn."""
        async for message in client.messages:
            self.counters.received += 1
            await inbox.put((time.monotonic(), message))

    async def _serve_commands(self, client: aiomqtt.Client,
                              inbox: asyncio.Queue[tuple[float, aiomqtt.Message]]) -> None:
        """One at a time, in arrival order: the unit has one state."""
        while True:
            arrived, message = await inbox.get()
            topic = message.topic.value
            request = parse_command(self.topics, topic, message.payload, message.properties,
                                    retained=message.retain, arrived=arrived,
                                    expiry_required=self.settings.session_expiry_s > 0)
            if isinstance(request, Unanswerable):
                self.counters.malformed += 1
                self._log.warning("mqtt.command_dropped", topic=request.topic[:_AUDIT_EXCERPT],
                                  reason=request.reason)
                await self._audit_refusal(request.user or "-", "-", request.reason, topic,
                                          message.payload)
                continue
            self.counters.commands += 1
            if message.retain:
                await self._clear_retained(client, topic)
            reply = await self._answer(request, topic, message.payload)
            if not reply.accepted:
                self.counters.commands_refused += 1
            if request.reply_to is not None:
                await self._reply(client, reply, request.reply_to)

    async def _answer(self, request: CommandRequest | Rejected, topic: str,
                      payload: Any) -> CommandReply:
        if isinstance(request, Rejected):
            return await self._reject(request, topic, payload)
        if request.expired(time.monotonic()):
            self.counters.expired += 1
            reason = "the command expired (its Message Expiry Interval) before its turn"
            await self._audit_refusal(request.user, request.command, reason, topic, payload)
            return refusal(request.command, reason, self._state())
        key = request.key()
        if key is None:
            return await self._execute(request)
        known = self._requests.recall(key, request.fingerprint())
        if known is None:
            reply = await self._execute(request)
            self._requests.remember(key, request.fingerprint(), reply)
            return reply
        self.counters.duplicates += 1
        if isinstance(known, str):  # the id reused for another command
            await self._audit_refusal(request.user, request.command, known, topic, payload)
            return refusal(request.command, known, self._state())
        self._log.info("mqtt.command_duplicate", user=request.user, command=request.command)
        await self._audit_refusal(request.user, request.command,
                                  "duplicate request id: not executed again, its first reply "
                                  "sent again", topic, payload)
        return known

    async def _reject(self, request: Rejected, topic: str, payload: Any) -> CommandReply:
        log = self._log.bind(user=request.user, command=request.command)
        if request.kind == "retained":
            self.counters.retained += 1
            log.warning("mqtt.command_retained", reason=request.reason)
        else:
            self.counters.malformed += 1
            log.warning("mqtt.command_malformed", reason=request.reason)
        await self._audit_refusal(request.user, request.command, request.reason, topic, payload)
        return refusal(request.command, request.reason, self._state())

    async def _execute(self, request: CommandRequest) -> CommandReply:
        log = self._log.bind(user=request.user, command=request.command)
        try:
            reply = await self.service.execute(request.user, request.command, request.args,
                                               session=f"mqtt:{request.user}")
        except Exception as exc:
            # The service records its own refusals; this is a failure it did not expect.
            log.exception("mqtt.command_failed")
            return refusal(request.command, f"internal error: {type(exc).__name__}: {exc}",
                           self._state())
        log.info("mqtt.command", accepted=reply.accepted, reason=reply.reason,
                 replied=request.reply_to is not None)
        return reply

    async def _audit_refusal(self, user: str, command: str, reason: str, topic: str,
                             payload: Any) -> None:
        """Rule 5: the reason for each refusal is recorded, the bridge's as the gate's."""
        if self.audit is None:
            return
        raw = payload if isinstance(payload, bytes | bytearray) else str(payload).encode()
        detail = {"channel": "mqtt", "topic": topic[:_AUDIT_EXCERPT],
                  "payload": bytes(raw[:_AUDIT_EXCERPT]).decode(errors="backslashreplace")}
        try:
            await self.audit.append_async(user, command, detail, "refused", reason)
        except AuditError as exc:
            # Nothing was executed; the refusal still goes out, and the log says it is missing.
            self._log.error("mqtt.refusal_not_audited", user=user, command=command,
                            error=str(exc))

    async def _clear_retained(self, client: aiomqtt.Client, topic: str) -> None:
        """An empty retained message deletes the broker's retained one on that topic."""
        await self._publish(client, topic, b"", retain=True)

    def _state(self) -> str | None:
        state = self.service.status().get("state")
        return None if state is None else str(state)

    async def _reply(self, client: aiomqtt.Client, reply: CommandReply,
                     reply_to: ReplyTo) -> None:
        payload, properties = reply_message(reply, reply_to)
        await self._publish(client, reply_to.topic, payload, properties=properties)


def _first(group: BaseExceptionGroup[aiomqtt.MqttError]) -> aiomqtt.MqttError:
    error = group.exceptions[0]
    return _first(error) if isinstance(error, BaseExceptionGroup) else error
