"""The latest known state of every device, with link health, and its fan-out.

Pollers write here; the interlock monitor reads first, then subscribers (records, CLI
progress, MQTT, HMI) get copies through bounded queues: a slow consumer loses its oldest
samples, it never delays the interlocks."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field, is_dataclass
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
        def plain(value: object) -> Any:
            if value is None:
                return None
            if is_dataclass(value) and not isinstance(value, type):
                return {k: (sorted(v) if isinstance(v, frozenset) else v)
                        for k, v in asdict(value).items()}
            return value

        return {
            "rf": plain(self.rf),
            "safety": plain(self.safety),
            "mfcs": {k: plain(v) for k, v in self.mfcs.items()},
            "axes": {k: plain(v) for k, v in self.axes.items()},
            "gauge": plain(self.gauge),
            "links": {k: v.ok for k, v in self.health.items()},
        }


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
