"""Reconciliation, every safety cycle (domain.md rule 10): every output whose commanded or
read-back value lies outside the envelope is driven back into it, RF first, in every state and
mode. The cycle never awaits a device: corrections are handed to the writer as owned tasks
(urgent: ahead of the polls queued on their bus), at most one in flight per actuator, and
repeated no faster than ``RETRY_S`` (slower after a refusal or a failure).

An actuator whose read-back is still outside after ``follow_timeout_s`` raises an alarm and
escalates: a precursor MFC -> precursor valve closed; a process-gas MFC -> master valve
closed; RF -> RF permit dropped, then the heartbeat stopped (the PLC drops RF by itself);
carriage or torch slide -> drive disabled; spindle -> alarm only (a hot rod keeps turning)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import structlog

from controller.config.line import LINEAR_AXES, PRECURSORS, PROCESS_GASES, LineConfig
from controller.machine.telemetry import Telemetry
from controller.safety.envelope import Envelope
from controller.safety.writer import Actuators

log = structlog.get_logger(__name__)

RETRY_S = 0.1  # wall: a correction not yet seen in the read-back is repeated this often
BACKOFF_S = 1.0  # wall: after a refused or failed correction
SOURCE = "envelope"
GASES = (*PROCESS_GASES, *PRECURSORS)
FOLLOW_ALARMS = {"rf": "follow_rf", **dict.fromkeys(GASES, "follow_gas"),
                 "carriage": "follow_axis", "torch_slide": "follow_axis",
                 "spindle": "follow_axis"}
FOLLOW_ALARM_IDS = tuple(dict.fromkeys(FOLLOW_ALARMS.values()))

Spawn = Callable[[Coroutine[Any, Any, None], str], object]
# A level: the reconciler is the only source of its alarms and tells the sink a level only
# when it differs from the last one it told (every level once, on the first cycle).
AlarmSink = Callable[[str, bool], None]


class Reconciler:
    def __init__(self, act: Actuators, telemetry: Telemetry, line: LineConfig, *,
                 spawn: Spawn, alarm: AlarmSink) -> None:
        self.act = act
        self.telemetry = telemetry
        self.line = line
        self._spawn = spawn
        self._alarm = alarm
        self._inflight: set[str] = set()
        self._next_at: dict[str, float] = {}
        self._outside_since: dict[str, float] = {}
        self.escalated: set[str] = set()
        self.corrections = 0
        self.last_envelope: Envelope | None = None
        self._levels: dict[str, bool] = {}  # what the alarm sink was last told
        # A reading this far above its limit has not followed (the line does not change).
        self._flow_tolerance: Mapping[str, float] = {
            name: 0.02 * line.mfc(name).full_scale_slpm + 0.05 for name in GASES}

    @property
    def stop_heartbeat(self) -> bool:
        """RF would not go off by the generator nor by the permit: let the PLC's watchdog act."""
        return "rf_heartbeat" in self.escalated

    # -- the cycle -------------------------------------------------------------------------
    def cycle(self, env: Envelope, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.last_envelope = env
        self._rf(env, now)  # RF first, always
        self._flows(env, now)  # before the outputs: a valve escalation goes out this cycle
        self._outputs(env, now)
        self._axes(env, now)
        self._annunciate(now)

    def _rf(self, env: Envelope, now: float) -> None:
        commanded = self.act.commanded
        # A lost link leaves the last reading standing: what the device was last seen doing
        # is what it is assumed to go on doing until a reading says otherwise.
        reading = self.telemetry.rf
        read_on = reading is not None and reading.rf_on
        if not env.rf_permitted and (commanded.rf_on or read_on):
            self._issue("rf", lambda: self.act.rf_off(SOURCE, urgent=True), now)
        elif commanded.power_kw > env.max_power_kw + 1e-6:
            self._issue("rf", lambda: self.act.set_power_kw(env.max_power_kw, SOURCE,
                                                            urgent=True), now)
        # RF that the generator may still give counts as off once the PLC shows the RF enable
        # withdrawn (the permit is in series with the relay): hardware-confirmed.
        effective = self._effective_outputs()
        enable_withdrawn = effective is not None and not effective.rf_permit
        outside = read_on and not env.rf_permitted and not enable_withdrawn
        if reading is not None and reading.forward_kw > env.max_power_kw * 1.1 + 1.0:
            outside = True
        since = self._follow("rf", outside, now)
        timeout = self.line.supervision.follow_timeout_s
        if since is None:
            self.escalated -= {"rf_permit", "rf_heartbeat"}
        elif now - since > 2 * timeout:
            self.escalated |= {"rf_permit", "rf_heartbeat"}
        elif now - since > timeout:
            self.escalated.add("rf_permit")

    def _outputs(self, env: Envelope, now: float) -> None:
        commanded = self.act.commanded.outputs
        effective = self._effective_outputs()
        changes: dict[str, bool] = {}

        def must_close(name: str, allowed: bool) -> None:
            if allowed:
                return
            if getattr(commanded, name) or (effective is not None and getattr(effective, name)):
                changes[name] = False

        must_close("gas_master_valve",
                   env.master_valve_allowed and "gas_master_valve" not in self.escalated)
        must_close("precursor_valve",
                   env.precursor_valve_allowed and "precursor_valve" not in self.escalated)
        must_close("heater_a", env.heaters_allowed)
        must_close("heater_b", env.heaters_allowed)
        must_close("rf_permit", env.rf_permitted and "rf_permit" not in self.escalated)
        if env.fan_required and not commanded.exhaust_fan:
            changes["exhaust_fan"] = True
        if changes:
            self._issue("safety_io",
                        lambda: self.act.set_outputs(SOURCE, urgent=True, **changes), now)

    def _effective_outputs(self) -> Any:
        io = self.telemetry.safety if self.telemetry.link_ok("safety_io") else None
        return None if io is None else io.outputs_effective

    def _flows(self, env: Envelope, now: float) -> None:
        timeout = self.line.supervision.follow_timeout_s
        commanded = self.act.commanded.flows_slpm
        readings = self.telemetry.mfcs
        for name in GASES:
            limit = env.flow_max_slpm.get(name, 0.0)
            if commanded.get(name, 0.0) > limit + 1e-6:
                self._issue(name, lambda n=name, v=limit: self.act.set_flow_slpm(  # type: ignore[misc]
                    n, v, SOURCE, urgent=True), now)
            reading = readings.get(name)  # the last one, if the link is lost
            outside = reading is not None and \
                reading.mass_slpm > limit + self._flow_tolerance[name]
            since = self._follow(name, outside, now)
            valve = "precursor_valve" if name in PRECURSORS else "gas_master_valve"
            if since is not None and now - since > timeout:
                self.escalated.add(valve)
            elif not self._any_outside(PRECURSORS if name in PRECURSORS else PROCESS_GASES):
                self.escalated.discard(valve)

    def _any_outside(self, names: tuple[str, ...]) -> bool:
        outside = self._outside_since  # empty in a quiet cycle: no scan
        return bool(outside) and any(n in outside for n in names)

    def _axes(self, env: Envelope, now: float) -> None:
        commanded = self.act.commanded
        timeout = self.line.supervision.follow_timeout_s
        for axis in LINEAR_AXES:
            limit = env.axis_max_speed.get(axis, 0.0)
            status = self.telemetry.axes.get(axis) if self.telemetry.link_ok(axis) else None
            too_fast_read = status is not None and status.moving and \
                abs(status.velocity) > limit * 1.05 + 1.0
            too_fast_cmd = commanded.axis_speeds.get(axis, 0.0) > limit + 1e-6
            if too_fast_cmd or too_fast_read:
                self._issue(axis, lambda a=axis: self.act.stop_axis(  # type: ignore[misc]
                    a, SOURCE, urgent=True), now)
            since = self._follow(axis, too_fast_read, now)
            if since is not None and now - since > timeout and axis not in commanded.disabled_axes:
                self._issue(f"{axis}:disable",
                            lambda a=axis: self.act.disable_axis(a, SOURCE), now)  # type: ignore[misc]
        self._spindle(env, now)

    def _spindle(self, env: Envelope, now: float) -> None:
        limit = env.axis_max_speed.get("spindle", 0.0)
        commanded = abs(self.act.commanded.spindle_rpm)
        if limit > 0 and commanded > limit + 1e-6:
            target = max(env.spindle_min_rpm, limit)
            self._issue("spindle", lambda: self.act.spindle_rpm(target, SOURCE, urgent=True),
                        now)
        status = self.telemetry.axes.get("spindle") if self.telemetry.link_ok("spindle") else None
        too_fast = status is not None and abs(status.velocity) > limit * 1.05 + 0.5
        self._follow("spindle", too_fast, now)
        # The hot-rod rule is never restarted by itself (IEC 60204-1): the alarm asks for it,
        # once the rod has been left still for longer than a spin-up.
        still = status is not None and env.spindle_min_rpm > 0 \
            and abs(status.velocity) < 0.5 * env.spindle_min_rpm
        since = self._follow("spindle_still", still, now)
        self._level("cooling_rotation_needed", since is not None
                    and now - since > self.line.supervision.follow_timeout_s)

    # -- bookkeeping -----------------------------------------------------------------------
    def _follow(self, key: str, outside: bool, now: float) -> float | None:
        """When the read-back went outside (None while inside)."""
        if not outside:
            self._outside_since.pop(key, None)
            return None
        return self._outside_since.setdefault(key, now)

    def _annunciate(self, now: float) -> None:
        late: set[str] = set()
        if self._outside_since:
            timeout = self.line.supervision.follow_timeout_s
            late = {FOLLOW_ALARMS[k] for k, since in self._outside_since.items()
                    if k in FOLLOW_ALARMS and now - since > timeout}
        for alarm in FOLLOW_ALARM_IDS:
            self._level(alarm, alarm in late)

    def _level(self, alarm: str, active: bool) -> None:
        # Told every cycle, the supervisor's sink looked the alarm's status up four times a
        # cycle to find that nothing had changed: a third of a quiet cycle's cost.
        if self._levels.get(alarm) != active:
            self._alarm(alarm, active)
            self._levels[alarm] = active

    def _issue(self, key: str, write: Callable[[], Coroutine[Any, Any, None]],
               now: float) -> None:
        if key in self._inflight or now < self._next_at.get(key, 0.0):
            return
        self._inflight.add(key)
        self._next_at[key] = now + RETRY_S
        self.corrections += 1
        self._spawn(self._run(key, write), f"envelope-{key}")

    async def _run(self, key: str, write: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await write()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the device may be the lost one: retry later, slower
            self._next_at[key] = time.monotonic() + BACKOFF_S
            log.warning("envelope.correction_failed", actuator=key, error=str(exc))
        finally:
            self._inflight.discard(key)
