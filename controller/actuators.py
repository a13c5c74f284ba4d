"""The single writer of every device's setpoints.

Whoever commands the machine (the executor, a safe-state reaction, maintenance) goes through
here, so each setpoint has one owner, is remembered as *commanded* (for reconciliation after a
restart) and is reported for the run record after it has gone out: records never delay a
write (domain.md rule 9)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from controller.machine import Machine
from drivers.safety_io import SafetyOutputs

log = structlog.get_logger(__name__)

SetpointListener = Callable[[str, str, float | bool | str, str], None]


@dataclass
class Commanded:
    rf_on: bool = False
    power_kw: float = 0.0
    flows_slpm: dict[str, float] = dataclasses.field(default_factory=dict)
    outputs: SafetyOutputs = dataclasses.field(default_factory=SafetyOutputs)
    spindle_rpm: float = 0.0
    axis_targets: dict[str, float] = dataclasses.field(default_factory=dict)


class Actuators:
    def __init__(self, machine: Machine, on_setpoint: SetpointListener | None = None) -> None:
        self.machine = machine
        self.commanded = Commanded()
        self._listeners: list[SetpointListener] = [on_setpoint] if on_setpoint else []

    def add_listener(self, listener: SetpointListener) -> None:
        self._listeners.append(listener)

    def _report(self, device: str, quantity: str, value: float | bool | str, source: str) -> None:
        for listener in self._listeners:
            try:
                listener(device, quantity, value, source)
            except Exception:  # a broken listener must never stop a write
                log.exception("actuators.listener_failed", device=device)

    # -- RF --------------------------------------------------------------------------------
    async def rf_off(self, source: str) -> None:
        await self.machine.rf.rf_off()
        self.commanded.rf_on = False
        self._report("rf", "rf_on", False, source)

    async def rf_on(self, source: str) -> None:
        await self.machine.rf.rf_on()
        self.commanded.rf_on = True
        self._report("rf", "rf_on", True, source)

    async def set_power_kw(self, kw: float, source: str) -> None:
        await self.machine.rf.set_power_kw(kw)
        self.commanded.power_kw = kw
        self._report("rf", "power_kw", kw, source)

    async def set_ramp_kw_s(self, rate: float, source: str) -> None:
        await self.machine.rf.set_ramp_kw_s(rate)
        self._report("rf", "ramp_kw_s", rate, source)

    async def reset_rf_fault(self, source: str) -> None:
        await self.machine.rf.reset_fault()
        self._report("rf", "fault_reset", True, source)

    # -- gases -----------------------------------------------------------------------------
    async def set_flow_slpm(self, device: str, slpm: float, source: str) -> None:
        mfc = self.machine.mfcs[device]
        slpm = max(0.0, min(slpm, mfc.full_scale_slpm))
        await mfc.set_flow_slpm(slpm)
        self.commanded.flows_slpm[device] = slpm
        self._report(device, "flow_slpm", slpm, source)

    async def set_outputs(self, source: str, **changes: bool) -> None:
        outputs = dataclasses.replace(self.commanded.outputs, **changes)
        await self.machine.safety_io.write_outputs(outputs)
        self.commanded.outputs = outputs
        for name, value in changes.items():
            self._report("safety_io", name, value, source)

    # -- axes ------------------------------------------------------------------------------
    async def spindle_rpm(self, rpm: float, source: str) -> None:
        spindle = self.machine.axes["spindle"]
        await spindle.enable()
        await spindle.set_velocity(rpm)
        self.commanded.spindle_rpm = rpm
        self._report("spindle", "velocity_rpm", rpm, source)

    async def move_axis(self, axis: str, position_mm: float, speed: float, source: str) -> None:
        await self.machine.axes[axis].move_absolute(position_mm, speed)
        self.commanded.axis_targets[axis] = position_mm
        self._report(axis, "target_mm", position_mm, source)
        self._report(axis, "speed", speed, source)

    async def stop_axis(self, axis: str, source: str) -> None:
        await self.machine.axes[axis].stop()
        self._report(axis, "stop", True, source)

    async def enable_axis(self, axis: str, source: str) -> None:
        await self.machine.axes[axis].enable()
        self._report(axis, "enable", True, source)

    async def home_axis(self, axis: str, source: str) -> None:
        await self.machine.axes[axis].home()
        self._report(axis, "home", True, source)

    def snapshot(self) -> dict[str, Any]:
        c = self.commanded
        return {
            "rf_on": c.rf_on,
            "power_kw": c.power_kw,
            "flows_slpm": dict(c.flows_slpm),
            "outputs": dataclasses.asdict(c.outputs),
            "spindle_rpm": c.spindle_rpm,
            "axis_targets": dict(c.axis_targets),
        }
