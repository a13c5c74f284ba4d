"""Faults injected into the running simulator, each for a given wall time or until cleared.

The board is plain data: simulated devices and bus servers ask it what is active for a device
each time they answer or step, so a fault takes effect on the very next frame. A fault that has
expired leaves the board at the next question about it (``active``) or at a listing.

Devices step the physics tens of times per tick, and asking for each of their faults every
sub-step was most of a quiet line's cost: ``quiet(device)`` answers "nothing on the board for
this device" in one dict lookup, so a device can skip its fault handling as a whole."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

LinkFault = Literal["silent", "disconnect", "corrupt", "torn"]
LINK_FAULTS: frozenset[str] = frozenset({"silent", "disconnect", "corrupt", "torn"})
VALUE_FAULTS: frozenset[str] = frozenset({"stuck", "drift"})
# Process faults: which device each belongs to is checked by the device that reads it.
PROCESS_FAULTS: frozenset[str] = frozenset(
    {
        "flame_out",
        "ignition_fail",
        "rf_fault",
        "reflected_high",
        "water_flow_low",
        "water_temp_high",
        "door_open",
        "estop",
        "gas_alarm",
        "o2_enrichment",
        "exhaust_lost",
        "scrubber_not_ready",
        "supply_pressure_low",
        "safety_relay_open",
        "drive_alarm",
        "limit_switch",  # a linear drive's limit switch (param side: positive / negative)
        "efficiency_drift",
        "gauge_invalid",
    }
)
ALL_FAULTS: frozenset[str] = LINK_FAULTS | VALUE_FAULTS | PROCESS_FAULTS


@dataclass
class Fault:
    device: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    expires_at: float | None = None

    def to_json(self, now: float) -> dict[str, Any]:
        remaining = None if self.expires_at is None else round(max(0.0, self.expires_at - now), 3)
        return {
            "device": self.device,
            "kind": self.kind,
            "params": self.params,
            "remaining_s": remaining,
        }


class FaultBoard:
    def __init__(self, wall: Callable[[], float] = time.monotonic) -> None:
        self._wall = wall
        self._faults: dict[tuple[str, str], Fault] = {}
        # How many faults each device has on the board (expired or not): quiet() is one lookup.
        self._per_device: dict[str, int] = {}

    def inject(
        self,
        device: str,
        kind: str,
        *,
        duration_s: float | None = None,
        params: dict[str, Any] | None = None,
    ) -> Fault:
        if kind not in ALL_FAULTS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(ALL_FAULTS)}")
        if duration_s is not None and duration_s <= 0:
            raise ValueError("duration_s must be positive")
        now = self._wall()
        fault = Fault(
            device=device,
            kind=kind,
            params=dict(params or {}),
            started_at=now,
            expires_at=None if duration_s is None else now + duration_s,
        )
        if (device, kind) not in self._faults:
            self._per_device[device] = self._per_device.get(device, 0) + 1
        self._faults[(device, kind)] = fault
        return fault

    def clear(self, device: str | None = None, kind: str | None = None) -> int:
        keys = [
            k
            for k in self._faults
            if (device is None or k[0] == device) and (kind is None or k[1] == kind)
        ]
        for k in keys:
            self._remove(k)
        return len(keys)

    def _remove(self, key: tuple[str, str]) -> None:
        del self._faults[key]
        left = self._per_device[key[0]] - 1
        if left:
            self._per_device[key[0]] = left
        else:
            del self._per_device[key[0]]

    def quiet(self, device: str) -> bool:
        """Nothing on the board for this device: every ``active(device, ...)`` would be None
        (and would have nothing to expire), so skipping them all changes nothing."""
        return device not in self._per_device

    def active(self, device: str, kind: str) -> Fault | None:
        fault = self._faults.get((device, kind))
        if fault is None:
            return None
        if fault.expires_at is not None and self._wall() >= fault.expires_at:
            self._remove((device, kind))
            return None
        return fault

    def is_active(self, device: str, kind: str) -> bool:
        return self.active(device, kind) is not None

    def link_fault(self, device: str) -> str | None:
        for kind in ("disconnect", "silent", "torn", "corrupt"):
            if self.is_active(device, kind):
                return kind
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        now = self._wall()
        for device, kind in list(self._faults):
            self.active(device, kind)  # expire
        return [f.to_json(now) for f in self._faults.values()]
