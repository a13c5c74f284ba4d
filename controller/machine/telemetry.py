"""The latest known state of every device, with link health, and its fan-out.

Pollers write here; the interlock monitor reads first, then subscribers (records, CLI
progress, MQTT, HMI) get copies through bounded queues: a slow consumer loses its oldest
samples, it never delays the interlocks."""

from __future__ import annotations

import asyncio
import copy
import functools
import time
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

from drivers.diameter_gauge import GaugeReading
from drivers.mfc import MfcReading
from drivers.rf_generator import RfStatus
from drivers.safety_io import SafetyInputs
from drivers.servo_axis import AxisStatus


@dataclass
class LinkHealth:
    timeout_s: float = 1.0  # no good reply for this long (wall) and the link counts as lost
    ever_ok: bool = False
    last_ok_wall: float = 0.0
    consecutive_failures: int = 0
    last_error: str | None = None
    polls: int = 0
    failures: int = 0

    @property
    def ok(self) -> bool:
        return self.ever_ok and time.monotonic() - self.last_ok_wall <= self.timeout_s


@dataclass
class Telemetry:
    rf: RfStatus | None = None
    safety: SafetyInputs | None = None
    mfcs: dict[str, MfcReading] = field(default_factory=dict)
    axes: dict[str, AxisStatus] = field(default_factory=dict)
    gauge: GaugeReading | None = None
    health: dict[str, LinkHealth] = field(default_factory=dict)
    updated_wall: float = field(default_factory=time.monotonic)

    def link(self, device: str) -> LinkHealth:
        return self.health.setdefault(device, LinkHealth())

    def link_ok(self, device: str) -> bool:
        health = self.health.get(device)
        return health is not None and health.ok

    def to_json(self) -> dict[str, Any]:
        return {
            "rf": _plain(self.rf),
            "safety": _plain(self.safety),
            "mfcs": {k: _plain(v) for k, v in self.mfcs.items()},
            "axes": {k: _plain(v) for k, v in self.axes.items()},
            "gauge": _plain(self.gauge),
            "links": {k: v.ok for k, v in self.health.items()},
        }


# A snapshot goes out with every HMI status (each browser, each second) and every telemetry
# sample: field by field, not through dataclasses.asdict, whose deep copy of every value was
# most of its cost (about 250 us per snapshot on the bench machine, on the event loop).
@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _plain(value: object) -> Any:
    """A reading as plain data: a dataclass as a dict of its fields (nested ones too), a
    frozenset (status words) as a sorted list; containers copied, scalars as they are."""
    if value is None or isinstance(value, bool | int | float | str | Enum):
        return value
    if is_dataclass(value) and not isinstance(value, type):
        return {name: _plain(getattr(value, name)) for name in _field_names(type(value))}
    if isinstance(value, frozenset):
        return sorted(value)
    return copy.deepcopy(value)


class Fanout:
    """Bounded per-subscriber queues; when full, the oldest item is dropped."""

    def __init__(self, maxsize: int = 256) -> None:
        self.maxsize = maxsize
        self._queues: list[asyncio.Queue[dict[str, Any]]] = []
        self.dropped = 0

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.maxsize)
        self._queues.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        if queue in self._queues:
            self._queues.remove(queue)

    def publish(self, item: dict[str, Any]) -> None:
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(item)
