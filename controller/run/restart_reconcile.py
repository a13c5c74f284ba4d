"""After a restart: what the dead controller last commanded, against what the machine does now.

The restarted controller first drives the machine to the safe state; this comparison is then
recorded with the interrupted run, so the record shows what the machine was doing when the
controller died and that nothing was left running unaccounted for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.machine.telemetry import Telemetry
from controller.records.run_records import RunDetail


@dataclass(frozen=True)
class Difference:
    device: str
    quantity: str
    commanded: float
    actual: float | None

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "quantity": self.quantity,
                "commanded": self.commanded, "actual": self.actual}

    def describe(self) -> str:
        actual = "unknown" if self.actual is None else f"{self.actual:g}"
        return f"{self.device} {self.quantity}: last commanded {self.commanded:g}, now {actual}"


def last_commanded(detail: RunDetail) -> dict[tuple[str, str], float]:
    latest: dict[tuple[str, str], float] = {}
    for setpoint in sorted(detail.setpoints, key=lambda s: s.t):
        latest[(setpoint.device, setpoint.quantity)] = setpoint.value
    return latest


def actual_value(telemetry: Telemetry, device: str, quantity: str) -> float | None:
    if device == "rf" and telemetry.rf is not None:
        if quantity == "rf_on":
            return float(telemetry.rf.rf_on)
        if quantity == "power_kw":
            return telemetry.rf.setpoint_kw
    if quantity == "flow_slpm" and device in telemetry.mfcs:
        return telemetry.mfcs[device].setpoint_slpm
    if device in telemetry.axes:
        status = telemetry.axes[device]
        if quantity == "velocity_rpm":
            return status.velocity
        if quantity == "target_mm":
            return status.position_mm
    return None


def reconcile(detail: RunDetail, telemetry: Telemetry) -> list[Difference]:
    """Every commanded quantity we can read back, with its value now."""
    differences = []
    for (device, quantity), commanded in sorted(last_commanded(detail).items()):
        actual = actual_value(telemetry, device, quantity)
        if actual is None and quantity not in ("rf_on", "power_kw", "flow_slpm"):
            continue
        differences.append(Difference(device, quantity, commanded, actual))
    return differences
