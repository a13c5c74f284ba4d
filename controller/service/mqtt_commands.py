"""Turning an MQTT command message into a service call, and the reply back into a message.

Pure functions, no I/O: the bridge feeds them a topic, a payload, the retain flag and the MQTT 5
properties; ``RequestMemory`` remembers the replies to recent request ids (de-duplication).
The username comes from the topic (``cmd/<username>/<command>``): the broker's ACL lets a client
publish only under its own name, so the segment is as trustworthy as the broker's login. Role
checks stay in the service, the same as for the HTTP API."""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.records.audit import canonical
from controller.service.gate import MAX_NAME
from controller.service.mqtt_settings import Topics
from controller.service.protocol import CommandReply

_COMMAND_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")

# Why the bridge refused a command before the service saw it.
RejectionKind = Literal["malformed", "retained", "no_expiry"]
# A request's identity: (user, response topic or "", correlation data).
RequestKey = tuple[str, str, bytes]
# What a request asked for: (command, its arguments as canonical JSON).
Fingerprint = tuple[str, str]


@dataclass(frozen=True)
class ReplyTo:
    """Where the requester waits for the answer (MQTT 5 request / response)."""

    topic: str
    correlation: bytes | None


@dataclass(frozen=True)
class CommandRequest:
    user: str
    command: str
    args: dict[str, Any]
    reply_to: ReplyTo | None  # None: the requester asked for no reply
    # The MQTT 5 correlation data: the request's id for de-duplication (None: no id given).
    request_id: bytes | None = None
    # time.monotonic() past which the Message Expiry Interval has run out (None: no expiry).
    expires_at: float | None = None

    def key(self) -> RequestKey | None:
        """Per user and response topic, so two requesters' ids never collide."""
        if self.request_id is None:
            return None
        return self.user, self.reply_to.topic if self.reply_to else "", self.request_id

    def fingerprint(self) -> Fingerprint:
        return self.command, canonical(self.args)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True)
class Rejected:
    """A command message the bridge refuses before the service sees it; ``reason`` says why."""

    user: str
    command: str
    reason: str
    reply_to: ReplyTo | None
    kind: RejectionKind = "malformed"


@dataclass(frozen=True)
class Unanswerable:
    """A message that cannot be answered: not a command topic, no user in it, or a response
    topic outside the requester's reply space. It is refused (logged, audited) without a reply,
    never executed."""

    topic: str
    reason: str
    user: str = ""


def _reply_to(properties: Properties | None, topics: Topics,
              user: str) -> ReplyTo | str | None:
    """The reply target, None if none was asked for, or the reason it is refused."""
    topic = getattr(properties, "ResponseTopic", None) if properties is not None else None
    if topic is None:
        return None
    # The controller may write anywhere under the root: a request naming another topic (another
    # machine's state, someone else's replies) would make it publish there on the user's behalf.
    prefix = topics.reply_prefix(user)
    if not isinstance(topic, str) or not topic.startswith(prefix) or any(
            c in topic for c in "+#"):
        return f"response topic {topic!r} is not under {prefix}"
    return ReplyTo(topic, _request_id(properties))


def _request_id(properties: Properties | None) -> bytes | None:
    correlation = getattr(properties, "CorrelationData", None) if properties else None
    return bytes(correlation) if correlation is not None else None


def _expires_at(properties: Properties | None, arrived: float) -> float | None:
    """The broker hands over the interval that remains (MQTT 5 3.3.2.3.3)."""
    interval = getattr(properties, "MessageExpiryInterval", None) if properties else None
    return None if interval is None else arrived + float(interval)


def _args(payload: bytes | bytearray | str | float | None) -> dict[str, Any] | str:
    """The command's arguments (a JSON object; empty means none), or why they are refused."""
    if payload is None or payload in (b"", ""):
        return {}
    if not isinstance(payload, bytes | bytearray | str):
        return f"payload must be a JSON object, not {type(payload).__name__}"
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"payload is not JSON: {exc}"
    except RecursionError:
        return "payload is not JSON: nested too deeply"
    if not isinstance(value, dict):
        return f"payload must be a JSON object, not {type(value).__name__}"
    return value


def parse_command(topics: Topics, topic: str, payload: bytes | bytearray | str | float | None,
                  properties: Properties | None, *, retained: bool = False,
                  arrived: float = 0.0, expiry_required: bool = False,
                  ) -> CommandRequest | Rejected | Unanswerable:
    """``retained``: the message's retain flag as published (the bridge subscribes with
    retain-as-published); ``arrived``: time.monotonic() when it came in; ``expiry_required``:
    refuse a command with no Message Expiry Interval (the controller keeps a session)."""
    names = topics.parse_command(topic)
    if names is None:
        return Unanswerable(topic, "not a command topic")
    user, command = names
    if not user:
        return Unanswerable(topic, "no user in the command topic")
    reply_to = _reply_to(properties, topics, user)
    if isinstance(reply_to, str):
        return Unanswerable(topic, reply_to, user)
    shown = command[:MAX_NAME]
    if retained:
        # Retained, it would be handed over again at every subscription: never a command.
        return Rejected(user, shown, "a retained command is never executed (publish commands "
                        "with retain off); it is cleared from the broker", reply_to, "retained")
    if "/" in command:
        return Rejected(user, shown, f"a command topic is {topics.command(user, '<command>')}"
                        f", not {topic[:200]!r}", reply_to)
    if not _COMMAND_NAME.fullmatch(command):
        return Rejected(user, shown, f"malformed command name {shown!r}", reply_to)
    expires_at = _expires_at(properties, arrived)
    if expiry_required and expires_at is None:
        return Rejected(user, command, "a command needs a message expiry interval (MQTT 5): "
                        "the controller keeps its session, so one without could run long "
                        "after it was sent", reply_to, "no_expiry")
    args = _args(payload)
    if isinstance(args, str):
        return Rejected(user, command, args, reply_to)
    return CommandRequest(user, command, args, reply_to, _request_id(properties), expires_at)


@dataclass(frozen=True)
class _Remembered:
    at: float
    fingerprint: Fingerprint
    reply: CommandReply


class RequestMemory:
    """The replies to the last ``size`` requests that carried an id, each kept ``window_s``
    (bounded both ways: a flood of ids cannot grow it, an old id is forgotten)."""

    def __init__(self, size: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.window_s = window_s
        self.clock = clock
        self._replies: OrderedDict[RequestKey, _Remembered] = OrderedDict()

    def __len__(self) -> int:
        self._forget_old()
        return len(self._replies)

    def recall(self, key: RequestKey, fingerprint: Fingerprint) -> CommandReply | str | None:
        """The first reply to a duplicate, the reason an id reused for another command is
        refused, or None for a new request."""
        self._forget_old()
        known = self._replies.get(key)
        if known is None:
            return None
        if known.fingerprint != fingerprint:
            return (f"request id {key[2][:64]!r} was used for {known.fingerprint[0]} with "
                    f"other arguments: a new command needs a new request id")
        return known.reply

    def remember(self, key: RequestKey, fingerprint: Fingerprint, reply: CommandReply) -> None:
        self._replies[key] = _Remembered(self.clock(), fingerprint, reply)
        self._replies.move_to_end(key)
        while len(self._replies) > self.size:
            self._replies.popitem(last=False)

    def _forget_old(self) -> None:
        oldest = self.clock() - self.window_s
        while self._replies and next(iter(self._replies.values())).at < oldest:
            self._replies.popitem(last=False)


def refusal(command: str, reason: str, state: str | None) -> CommandReply:
    return CommandReply(command=command, accepted=False, reason=reason, state=state)


def reply_message(reply: CommandReply, reply_to: ReplyTo) -> tuple[bytes, Properties]:
    """The reply's JSON body and its properties (the request's correlation data, echoed)."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call] # paho: untyped
    properties.ContentType = "application/json"
    if reply_to.correlation is not None:
        properties.CorrelationData = reply_to.correlation
    return json.dumps(reply.to_json(), default=str).encode(), properties
