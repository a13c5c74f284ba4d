"""What the outward-facing layers (HTTP API, MQTT bridge, HMI) need of the running controller.

They depend on this Protocol, never on the supervisor, so each can be tested against a fake
and the service can grow without touching them. Every method that changes something takes the
acting user and returns a ``CommandReply``; the implementation checks the role, asks the state
machine, records the command durably, and only then answers (architecture: command path)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class CommandReply:
    command: str
    accepted: bool
    reason: str | None = None  # why it was refused: state, mode, role or interlock
    state: str | None = None  # the unit's state after the command
    data: dict[str, Any] = field(default_factory=dict)
    # Who refused: "unknown" (no such command), "role" (the user's role may not), None (the
    # controller itself: state, mode, interlocks...). A channel maps it to its own terms.
    refused_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "accepted": self.accepted, "reason": self.reason,
                "state": self.state, "data": self.data}


@dataclass(frozen=True)
class Event:
    """One numbered event for the plant: state change, pass, run start/end, alarm."""

    seq: int
    kind: str
    t: float
    payload: dict[str, Any]


class ControllerService(Protocol):
    line: str
    machine: str

    def status(self) -> dict[str, Any]:
        """State, mode, run, cursor, live values, active alarms (JSON-ready)."""
        ...

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """Live items: {"kind": "state" | "alarm" | "pass" | "progress" | "telemetry", ...}."""
        ...

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None: ...

    def events_since(self, seq: int, limit: int = 1000) -> list[Event]:
        """Durable events after seq, in order (for republishing what a client missed)."""
        ...

    async def execute(self, user: str, command: str, args: dict[str, Any],
                      session: str | None = None) -> CommandReply:
        """Any operator or maintenance command by name (start, hold, unhold, stop, abort,
        reset, clear, ack, shelve, mode, trim, add_passes, jog, home, move, device_test...);
        ``session`` names the client session (a jog lease belongs to it)."""
        ...
