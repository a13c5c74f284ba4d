"""The single writer of every device's setpoints, with the safety envelope in front of it.

Whoever commands the machine (the executor, a trim, a safe-state reaction, the reconciler,
maintenance, a device test, a reset, restart reconciliation) goes through here. Each write is
checked against the envelope of this instant and refused, with the reason, when it would take
an actuator outside it (``EnvelopeRefused``; reported for the record): nothing is clamped
silently, so callers that adjust (the closed loop) limit themselves upstream, and the driver's
own range check stays the last guard. Writes that move towards the safe state (RF off, a flow
down, a valve closed, an axis stopped) are always allowed.

Each setpoint has one owner, is remembered as *commanded* (for the reconciler and for restart
reconciliation) and is reported after it has gone out: records never delay a write (rule 9)."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from controller.machine.devices import Machine
from controller.safety.envelope import Envelope
from drivers.safety_io import SafetyOutputs

log = structlog.get_logger(__name__)

SetpointListener = Callable[[str, str, float | bool | str, str], None]
RefusalListener = Callable[["EnvelopeRefused", str], None]
EnvelopeSource = Callable[[], Envelope]
_EPS = 1e-6


class EnvelopeRefused(Exception):
    """A write the present envelope forbids: which actuator, what was asked, and why."""

    def __init__(self, device: str, quantity: str, value: float | bool, reason: str) -> None:
        super().__init__(f"{device} {quantity}={value}: refused by the safety envelope: {reason}")
        self.device = device
        self.quantity = quantity
        self.value = value
        self.reason = reason


@dataclass
class Commanded:
    rf_on: bool = False
    power_kw: float = 0.0
    flows_slpm: dict[str, float] = dataclasses.field(default_factory=dict)
    outputs: SafetyOutputs = dataclasses.field(default_factory=SafetyOutputs)
    spindle_rpm: float = 0.0
    axis_targets: dict[str, float] = dataclasses.field(default_factory=dict)
    axis_speeds: dict[str, float] = dataclasses.field(default_factory=dict)  # while moving
    disabled_axes: set[str] = dataclasses.field(default_factory=set)


class Actuators:
    def __init__(self, machine: Machine, envelope: EnvelopeSource,
                 on_setpoint: SetpointListener | None = None) -> None:
        self.machine = machine
        self.commanded = Commanded()
        self.refusals = 0
        self._envelope = envelope
        self._listeners: list[SetpointListener] = [on_setpoint] if on_setpoint else []
        self._refusal_listeners: list[RefusalListener] = []
        self._sent = 0
        self._landed: dict[str, int] = {}
        self._axis_intent: dict[str, Callable[[], Awaitable[None]]] = {}

    async def _axis_write(self, axis: str, send: Callable[[], Awaitable[None]]) -> None:
        """An axis's latest intent (move, velocity, jog or stop) is what it ends with."""
        self._axis_intent[axis] = send

        async def latest() -> None:
            await self._axis_intent[axis]()
        await self._in_order(f"axis:{axis}", send, latest)

    async def _in_order(self, key: str, send: Callable[[], Awaitable[None]],
                        latest: Callable[[], Awaitable[None]]) -> None:
        """Send a write; if a newer write of the same setpoint landed first (an urgent one
        overtakes queued ones on its bus), this one is stale on the wire: send the latest
        intent again, so the device ends where the controller last asked."""
        self._sent += 1
        mine = self._sent
        await send()
        if self._landed.get(key, 0) > mine:
            log.info("actuators.stale_write_superseded", setpoint=key)
            await latest()
            return
        self._landed[key] = mine

    def add_listener(self, listener: SetpointListener) -> None:
        self._listeners.append(listener)

    def add_refusal_listener(self, listener: RefusalListener) -> None:
        self._refusal_listeners.append(listener)

    def envelope(self) -> Envelope:
        return self._envelope()

    def _report(self, device: str, quantity: str, value: float | bool | str, source: str) -> None:
        for listener in self._listeners:
            try:
                listener(device, quantity, value, source)
            except Exception:  # a broken listener must never stop a write
                log.exception("actuators.listener_failed", device=device)

    def _refuse(self, device: str, quantity: str, value: float | bool, reason: str,
                source: str) -> EnvelopeRefused:
        refusal = EnvelopeRefused(device, quantity, value, reason)
        self.refusals += 1
        log.warning("actuators.refused", device=device, quantity=quantity, value=value,
                    reason=reason, source=source)
        for listener in self._refusal_listeners:
            try:
                listener(refusal, source)
            except Exception:
                log.exception("actuators.refusal_listener_failed", device=device)
        return refusal

    # -- RF --------------------------------------------------------------------------------
    async def rf_off(self, source: str, *, urgent: bool = False) -> None:
        self.commanded.rf_on = False  # the intent first: the reconciler re-asserts it
        await self._in_order("rf_on", lambda: self.machine.rf.rf_off(urgent=urgent),
                             self._rf_latest)
        self._report("rf", "rf_on", False, source)

    async def rf_on(self, source: str) -> None:
        env = self.envelope()
        if not env.rf_permitted:
            raise self._refuse("rf", "rf_on", True, env.reasons.get("rf", "RF not permitted"),
                               source)
        if self.commanded.power_kw > env.max_power_kw + _EPS:
            raise self._refuse("rf", "power_kw", self.commanded.power_kw,
                               f"above {env.max_power_kw:g} kW ({env.reasons.get('rf', '')})",
                               source)
        if not self.commanded.outputs.rf_permit:
            await self.set_outputs(source, rf_permit=True)
        self.commanded.rf_on = True
        await self._in_order("rf_on", self.machine.rf.rf_on, self._rf_latest)
        self._report("rf", "rf_on", True, source)

    async def _rf_latest(self) -> None:
        if self.commanded.rf_on:
            await self.machine.rf.rf_on()
        else:
            await self.machine.rf.rf_off(urgent=True)

    async def set_power_kw(self, kw: float, source: str, *, urgent: bool = False) -> None:
        env = self.envelope()
        if kw > env.max_power_kw + _EPS and kw > self.commanded.power_kw:
            why = env.reasons.get("rf", "the generator's maximum")
            raise self._refuse("rf", "power_kw", kw, f"above {env.max_power_kw:g} kW ({why})",
                               source)
        self.commanded.power_kw = kw
        await self._in_order(
            "power_kw", lambda: self.machine.rf.set_power_kw(kw, urgent=urgent),
            lambda: self.machine.rf.set_power_kw(self.commanded.power_kw, urgent=True))
        self._report("rf", "power_kw", kw, source)

    async def set_ramp_kw_s(self, rate: float, source: str) -> None:
        await self.machine.rf.set_ramp_kw_s(rate)
        self._report("rf", "ramp_kw_s", rate, source)

    async def reset_rf_fault(self, source: str) -> None:
        await self.machine.rf.reset_fault()
        self._report("rf", "fault_reset", True, source)

    # -- gases -----------------------------------------------------------------------------
    async def set_flow_slpm(self, device: str, slpm: float, source: str, *,
                            urgent: bool = False) -> None:
        env = self.envelope()
        limit = env.flow_max_slpm.get(device, 0.0)
        if slpm > limit + _EPS and slpm > self.commanded.flows_slpm.get(device, 0.0) + _EPS:
            why = env.reasons.get(device, "full scale")
            raise self._refuse(device, "flow_slpm", slpm, f"above {limit:g} slpm ({why})",
                               source)
        mfc = self.machine.mfcs[device]
        self.commanded.flows_slpm[device] = slpm
        await self._in_order(
            device, lambda: mfc.set_flow_slpm(slpm, urgent=urgent),
            lambda: mfc.set_flow_slpm(self.commanded.flows_slpm[device], urgent=True))
        self._report(device, "flow_slpm", slpm, source)

    def outputs_refusal(self, env: Envelope, changes: dict[str, bool]) -> tuple[str, str] | None:
        """(output, reason) when switching these outputs would leave the envelope."""
        opening = {name for name, on in changes.items() if on}
        needs = {
            "gas_master_valve": (env.master_valve_allowed, "gas_master_valve"),
            "precursor_valve": (env.precursor_valve_allowed, "precursor_valve"),
            "heater_a": (env.heaters_allowed, "heaters"),
            "heater_b": (env.heaters_allowed, "heaters"),
            "rf_permit": (env.rf_permitted, "rf"),
        }
        for name in sorted(opening & set(needs)):
            allowed, key = needs[name]
            if not allowed:
                return name, env.reasons.get(key, "not allowed now")
        if changes.get("exhaust_fan") is False and env.fan_required:
            return "exhaust_fan", "the exhaust must run while gas may be present"
        return None

    async def set_outputs(self, source: str, *, urgent: bool = False, **changes: bool) -> None:
        refused = self.outputs_refusal(self.envelope(), changes)
        if refused is not None:
            name, reason = refused
            raise self._refuse("safety_io", name, changes[name], reason, source)
        outputs = dataclasses.replace(self.commanded.outputs, **changes)
        self.commanded.outputs = outputs
        io = self.machine.safety_io
        await self._in_order("outputs", lambda: io.write_outputs(outputs, urgent=urgent),
                             lambda: io.write_outputs(self.commanded.outputs, urgent=True))
        for name, value in changes.items():
            self._report("safety_io", name, value, source)

    # -- axes ------------------------------------------------------------------------------
    def _check_speed(self, axis: str, speed: float, source: str) -> None:
        env = self.envelope()
        limit = env.axis_max_speed.get(axis, 0.0)
        if abs(speed) > limit + _EPS:
            why = env.reasons.get(axis, "the axis maximum")
            raise self._refuse(axis, "speed", speed, f"above {limit:g} ({why})", source)

    def _check_spindle_turns(self, rpm: float, source: str) -> None:
        env = self.envelope()
        if abs(rpm) + _EPS < env.spindle_min_rpm:
            raise self._refuse(
                "spindle", "velocity_rpm", rpm,
                f"the rod is hot: it keeps turning at {env.spindle_min_rpm:g} rpm or more "
                "until it has cooled", source)

    async def spindle_rpm(self, rpm: float, source: str, *, urgent: bool = False) -> None:
        self._check_speed("spindle", rpm, source)
        self._check_spindle_turns(rpm, source)
        spindle = self.machine.axes["spindle"]
        if not urgent or "spindle" in self.commanded.disabled_axes:
            # A velocity on a disabled drive would not turn the rod. An urgent write (a trip's
            # cooling speed) is one frame ahead of the bus's queue: the drive is enabled
            # already unless this controller disabled it (after an E-stop the operator's
            # cool_rotation enables it first).
            await spindle.enable()
            self.commanded.disabled_axes.discard("spindle")
        self.commanded.spindle_rpm = rpm
        await self._axis_write("spindle", lambda: spindle.set_velocity(rpm, urgent=urgent))
        self._report("spindle", "velocity_rpm", rpm, source)

    async def move_axis(self, axis: str, position_mm: float, speed: float, source: str, *,
                        urgent: bool = False) -> None:
        self._check_speed(axis, speed, source)
        self.commanded.axis_targets[axis] = position_mm
        self.commanded.axis_speeds[axis] = speed
        drive = self.machine.axes[axis]
        await self._axis_write(axis, lambda: drive.move_absolute(position_mm, speed,
                                                                 urgent=urgent))
        self._report(axis, "target_mm", position_mm, source)
        self._report(axis, "speed", speed, source)

    async def oscillate_axis(self, axis: str, turning_points: tuple[float, float], speed: float,
                             strokes: int, source: str) -> None:
        """The drive runs the strokes between the turning points by itself (no round trip at
        a turning point); any stop of the axis ends it."""
        self._check_speed(axis, speed, source)
        first_mm, second_mm = turning_points
        self.commanded.axis_targets[axis] = second_mm
        self.commanded.axis_speeds[axis] = speed
        drive = self.machine.axes[axis]
        await self._axis_write(axis, lambda: drive.oscillate(first_mm, second_mm, speed, strokes))
        self._report(axis, "oscillate", f"{first_mm:g} <-> {second_mm:g} x{strokes}", source)
        self._report(axis, "speed", speed, source)

    async def set_oscillation_speed(self, axis: str, speed: float, source: str) -> None:
        """The speed of the oscillation's next pass (taken at the next reversal)."""
        self._check_speed(axis, speed, source)
        self.commanded.axis_speeds[axis] = speed
        drive = self.machine.axes[axis]
        await self._axis_write(axis, lambda: drive.set_oscillation_speed(speed))
        self._report(axis, "speed", speed, source)

    async def set_oscillation_strokes(self, axis: str, strokes: int, source: str) -> None:
        """The stroke count of a running oscillation (read by the drive at a reversal)."""
        drive = self.machine.axes[axis]
        await self._axis_write(axis, lambda: drive.set_oscillation_strokes(strokes))
        self._report(axis, "strokes", strokes, source)

    async def jog_axis(self, axis: str, direction: int, speed: float, source: str) -> None:
        self._check_speed(axis, speed, source)
        if axis == "spindle":
            self._check_spindle_turns(speed, source)
        self.commanded.axis_speeds[axis] = speed
        if axis == "spindle":
            self.commanded.spindle_rpm = direction * speed
        drive = self.machine.axes[axis]
        await self._axis_write(axis, lambda: drive.jog(direction, speed))
        self._report(axis, "jog", direction * speed, source)

    async def stop_axis(self, axis: str, source: str, *, urgent: bool = False) -> None:
        if axis == "spindle":
            self._check_spindle_turns(0.0, source)
            self.commanded.spindle_rpm = 0.0
        self.commanded.axis_speeds.pop(axis, None)
        drive = self.machine.axes[axis]
        await self._axis_write(axis, lambda: drive.stop(urgent=urgent))
        self._report(axis, "stop", True, source)

    async def enable_axis(self, axis: str, source: str) -> None:
        await self.machine.axes[axis].enable()
        self.commanded.disabled_axes.discard(axis)
        self._report(axis, "enable", True, source)

    async def disable_axis(self, axis: str, source: str) -> None:
        if axis == "spindle":
            self._check_spindle_turns(0.0, source)
        self.commanded.axis_speeds.pop(axis, None)
        self.commanded.disabled_axes.add(axis)
        await self.machine.axes[axis].disable()
        self._report(axis, "disable", True, source)

    async def home_axis(self, axis: str, source: str) -> None:
        # The drive homes at setup speed by itself (docs/devices.md): allowed unless no axis
        # may move at all.
        env = self.envelope()
        if env.axis_max_speed.get(axis, 0.0) <= 0:
            raise self._refuse(axis, "home", True, env.reasons.get(axis, ""), source)
        await self.machine.axes[axis].home()
        self._report(axis, "home", True, source)

    async def reset_axis_alarm(self, axis: str, source: str) -> None:
        await self.machine.axes[axis].reset_alarm()
        self._report(axis, "alarm_reset", True, source)

    async def reset_heartbeat_latch(self, source: str) -> None:
        await self.machine.safety_io.reset_heartbeat_latch()
        self._report("safety_io", "heartbeat_latch_reset", True, source)

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
