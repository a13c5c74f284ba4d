"""Turning an MQTT command message into a service call, and the reply back into a message.

Pure functions, no I/O: the bridge feeds them a topic, a payload and the MQTT 5 properties.
The username comes from the topic (``cmd/<username>/<command>``): the broker's ACL lets a client
publish only under its own name, so the segment is as trustworthy as the broker's login. Role
checks stay in the service, the same as for the HTTP API."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.service.mqtt_settings import Topics
from controller.service.protocol import CommandReply

_COMMAND_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


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


@dataclass(frozen=True)
class Malformed:
    """A command message the bridge refuses before the service sees it; ``reason`` says why."""

    user: str
    command: str
    reason: str
    reply_to: ReplyTo | None


@dataclass(frozen=True)
class Unanswerable:
    """A message that cannot be answered: not a command topic, or a response topic outside the
    requester's reply space. It is logged and dropped, never executed."""

    topic: str
    reason: str


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
    correlation = getattr(properties, "CorrelationData", None)
    return ReplyTo(topic, bytes(correlation) if correlation is not None else None)


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
    if not isinstance(value, dict):
        return f"payload must be a JSON object, not {type(value).__name__}"
    return value


def parse_command(topics: Topics, topic: str, payload: bytes | bytearray | str | float | None,
                  properties: Properties | None) -> CommandRequest | Malformed | Unanswerable:
    names = topics.parse_command(topic)
    if names is None:
        return Unanswerable(topic, "not a command topic")
    user, command = names
    reply_to = _reply_to(properties, topics, user)
    if isinstance(reply_to, str):
        return Unanswerable(topic, reply_to)
    if not _COMMAND_NAME.fullmatch(command):
        return Malformed(user, command, f"malformed command name {command!r}", reply_to)
    args = _args(payload)
    if isinstance(args, str):
        return Malformed(user, command, args, reply_to)
    return CommandRequest(user, command, args, reply_to)


def refusal(command: str, reason: str, state: str | None) -> CommandReply:
    return CommandReply(command=command, accepted=False, reason=reason, state=state)


def reply_message(reply: CommandReply, reply_to: ReplyTo) -> tuple[bytes, Properties]:
    """The reply's JSON body and its properties (the request's correlation data, echoed)."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call] # paho: untyped
    properties.ContentType = "application/json"
    if reply_to.correlation is not None:
        properties.CorrelationData = reply_to.correlation
    return json.dumps(reply.to_json(), default=str).encode(), properties
