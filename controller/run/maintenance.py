"""Maintenance mode (domain.md rule 6): jogging on a lease, homing, moves and device tests,
with every interlock still in force.

- Refused while a run is active, outside maintenance mode, and while the E-stop chain or the
  safety relay is open: the reason says which.
- A continuous jog, and a move until it arrives, lives on a lease (500 ms by default,
  renewed every 100 ms by the client):
  the watchdog stops any axis whose lease ran out, so a lost client never means a runaway. A
  lease belongs to the session that took it: only that session renews it (rule 6). A stop that
  fails is retried until it goes through.
- Every write goes through the single writer: the safety envelope refuses a device test the
  present conditions forbid (the exhaust lost, a door open for the RF...), and the reconciler
  ends one that a new condition forbids within a safety cycle.
- The hot-rod rule holds here too: a spindle jog that ends, or leaving maintenance, leaves a
  hot rod turning at its cooling speed.
- Speeds are capped by the axis's maintenance cap, and by setup speed (a fraction of maximum,
  10 % by default) while a door is open; the RF stays off with a door open.
- Leaving maintenance mode returns every device to idle."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from controller.config.line import AXIS_NAMES, MFC_NAMES, PRECURSORS, LineConfig, ServoAxisConfig
from controller.machine.devices import Machine
from controller.machine.telemetry import Telemetry
from controller.safety.states import StateMachine
from controller.safety.writer import Actuators, EnvelopeRefused


class MaintainedLine(Protocol):
    """What maintenance needs of the supervisor (which holds it): no import of it, so no
    circle."""

    line: LineConfig
    machine: Machine
    sm: StateMachine
    telemetry: Telemetry
    act: Actuators

    def link_alive(self, device: str) -> bool: ...
    async def make_idle(self, source: str = "idle") -> None: ...

log = structlog.get_logger(__name__)

LEASE_S = 0.5
WATCHDOG_S = 0.02


class MaintenanceRefused(Exception):
    def __init__(self, action: str, reason: str) -> None:
        super().__init__(f"{action}: {reason}")
        self.action = action
        self.reason = reason


@dataclass
class Lease:
    axis: str
    direction: int  # a jog's direction; 0 for a move
    speed: float
    expires_at: float
    user: str
    session: str
    target_mm: float | None = None  # a move's target


class Maintenance:
    def __init__(self, sup: MaintainedLine, *, lease_s: float = LEASE_S) -> None:
        self.sup = sup
        self.lease_s = lease_s
        self.leases: dict[str, Lease] = {}
        self.lease_expiries = 0
        self.test_leases: dict[str, float] = {}  # device -> wall time its test ends
        self.test_lease_s = sup.line.supervision.device_test_lease_s
        self.pending_stops: set[str] = set()  # axes whose stop has not gone through yet

    # -- checks ----------------------------------------------------------------------------
    def refusal(self, action: str) -> str | None:
        refused = self.sup.sm.can_maintain()
        if refused is not None:
            return refused.reason
        io = self.sup.telemetry.safety
        if io is None or not self.sup.link_alive("safety_io"):
            return "the safety I/O does not answer"
        if not io.estop_ok:
            return "the E-stop chain is open"
        if not io.safety_relay_ok:
            return "the safety relay is open"
        return None

    def _check(self, action: str) -> None:
        reason = self.refusal(action)
        if reason is not None:
            raise MaintenanceRefused(action, reason)

    def door_open(self) -> bool:
        io = self.sup.telemetry.safety
        return io is None or not io.doors_closed

    def _axis(self, axis: str) -> ServoAxisConfig:
        if axis not in AXIS_NAMES:
            known = ", ".join(AXIS_NAMES)
            raise MaintenanceRefused("axis", f"unknown axis {axis!r}; axes: {known}")
        return self.sup.line.axis(axis)

    def speed_limit(self, axis: str) -> float:
        cfg = self._axis(axis)
        cap = min(cfg.max_speed, cfg.maintenance_speed_cap or cfg.max_speed)
        if self.door_open():
            cap = min(cap, cfg.setup_speed)
        return cap

    def _speed(self, axis: str, requested: float | None) -> float:
        limit = self.speed_limit(axis)
        speed = limit if requested is None else requested
        if speed <= 0:
            raise MaintenanceRefused("speed", f"speed must be positive, got {speed:g}")
        if speed > limit + 1e-9:
            why = "setup speed: a door is open" if self.door_open() else "the maintenance cap"
            raise MaintenanceRefused("speed", f"{speed:g} exceeds {limit:g} ({why})")
        return speed

    # -- motion ----------------------------------------------------------------------------
    async def jog(self, axis: str, direction: int, speed: float | None, user: str,
                  session: str | None = None) -> str:
        """Start or renew a jog lease; returns 'started' or 'renewed'."""
        self._check("jog")
        if direction not in (-1, 1):
            raise MaintenanceRefused("jog", "direction must be + or -")
        wanted = Lease(axis, direction, self._speed(axis, speed), 0.0, user, session or user)
        return await self._on_lease("jog", wanted, lambda source: self.sup.act.jog_axis(
            axis, direction, wanted.speed, source))

    async def _on_lease(self, action: str, wanted: Lease,
                        start: Callable[[str], Awaitable[None]]) -> str:
        """Renew the session's own lease for the same motion, or start the motion on a new
        one; another session's lease is never touched (rule 6)."""
        now = time.monotonic()
        lease = self.leases.get(wanted.axis)
        if lease is not None and lease.session != wanted.session:
            raise MaintenanceRefused(
                action, f"{wanted.axis} is in motion for another session ({lease.user}): "
                "only it renews its lease")
        same = (lease is not None and lease.direction == wanted.direction
                and lease.target_mm == wanted.target_mm and lease.speed == wanted.speed)
        if lease is not None and same:
            lease.expires_at = now + self.lease_s
            return "renewed"
        source = f"maintenance:{wanted.user}"
        await self._write(action, self.sup.act.enable_axis(wanted.axis, source))
        self.leases[wanted.axis] = dataclasses.replace(wanted, expires_at=now + self.lease_s)
        try:
            await self._write(action, start(source))
        except MaintenanceRefused:
            self.leases.pop(wanted.axis, None)
            raise
        return "started"

    async def _write(self, action: str, write: Any) -> None:
        try:
            await write
        except EnvelopeRefused as exc:
            raise MaintenanceRefused(action, exc.reason) from exc

    async def jog_stop(self, axis: str, user: str) -> None:
        self._axis(axis)
        self.leases.pop(axis, None)
        await self._end_motion(axis, f"maintenance:{user}")

    async def _end_motion(self, axis: str, source: str) -> None:
        """Stop an axis, or bring a hot rod's spindle to its cooling speed; a failure is
        retried by the watchdog until it goes through."""
        try:
            env = self.sup.act.envelope()
            if axis == "spindle" and env.spindle_min_rpm > 0:
                await self.sup.act.spindle_rpm(env.spindle_min_rpm, source, urgent=True)
            else:
                await self.sup.act.stop_axis(axis, source, urgent=True)
        except Exception:
            self.pending_stops.add(axis)
            raise
        self.pending_stops.discard(axis)

    async def home(self, axis: str, user: str) -> None:
        self._check("home")
        self._axis(axis)
        await self._write("home", self.sup.act.enable_axis(axis, f"maintenance:{user}"))
        await self._write("home", self.sup.act.home_axis(axis, f"maintenance:{user}"))

    async def move(self, axis: str, position_mm: float, speed: float | None, user: str,
                   session: str | None = None) -> str:
        """Start or renew a move on its lease (like a jog: a lost client never leaves an axis
        travelling); returns 'started', 'renewed' or 'arrived'."""
        self._check("move")
        session = session or user
        cfg = self._axis(axis)
        if cfg.motion != "linear":
            raise MaintenanceRefused("move", f"{axis} is rotary: jog it or test it instead")
        if not cfg.min_position_mm <= position_mm <= cfg.max_position_mm:
            raise MaintenanceRefused(
                "move", f"{position_mm:g} mm is outside {axis}'s soft limits "
                f"[{cfg.min_position_mm:g}, {cfg.max_position_mm:g}] mm")
        status = self.sup.telemetry.axes.get(axis)
        if status is None or not status.homed:
            # The drive itself refuses an absolute move before homing: say so plainly.
            raise MaintenanceRefused("move", f"{axis} is not homed: home it first")
        chosen = self._speed(axis, speed)
        lease = self.leases.get(axis)
        if self._arrived(axis, position_mm) and (lease is None or lease.target_mm is not None):
            self.leases.pop(axis, None)
            return "arrived"  # already there (the watchdog ends an arrived move's lease)
        wanted = Lease(axis, 0, chosen, 0.0, user, session, target_mm=position_mm)
        return await self._on_lease("move", wanted, lambda source: self.sup.act.move_axis(
            axis, position_mm, chosen, source))

    def _arrived(self, axis: str, target_mm: float) -> bool:
        status = self.sup.telemetry.axes.get(axis)
        tolerance = self.sup.line.supervision.position_tolerance_mm
        return status is not None and not status.moving \
            and abs(status.position_mm - target_mm) <= tolerance

    # -- device tests ----------------------------------------------------------------------
    async def device_test(self, args: dict[str, Any], user: str) -> dict[str, Any]:
        self._check("device_test")
        device = str(args.get("device", ""))
        source = f"device_test:{user}"
        if device in MFC_NAMES and "flow_slpm" in args:
            flow = float(args["flow_slpm"])
            full_scale = self.sup.line.mfc(device).full_scale_slpm
            if not 0 <= flow <= full_scale:
                raise MaintenanceRefused(
                    "device_test", f"{flow:g} slpm outside [0, {full_scale:g}]")
            valves: dict[str, bool] = {"exhaust_fan": True, "gas_master_valve": True}
            if device in PRECURSORS:
                valves["precursor_valve"] = flow > 0
            # The test is under way (the envelope lifts its device) before the first write;
            # a refusal ends it again.
            self._test_lease(device, flow > 0)
            try:
                if flow > 0:
                    await self._write("device_test", self.sup.act.set_outputs(source, **valves))
                await self._write("device_test",
                                  self.sup.act.set_flow_slpm(device, flow, source))
            except MaintenanceRefused:
                self._test_lease(device, running=False)
                raise
            return {"device": device, "flow_slpm": flow, "lease_s": self.test_lease_s}
        if device == "rf" and "power_kw" in args:
            power = float(args["power_kw"])
            test_max = self.sup.line.supervision.device_test_max_power_kw
            if self.door_open():
                raise MaintenanceRefused("device_test", "the RF stays off while a door is open")
            if not 0 <= power <= test_max:
                raise MaintenanceRefused(
                    "device_test", f"test power {power:g} kW outside [0, {test_max:g}]")
            self._test_lease(device, power > 0)
            try:
                if power == 0:
                    await self.sup.act.rf_off(source)
                else:
                    await self._write("device_test",
                                      self.sup.act.set_power_kw(power, source))
                    await self._write("device_test", self.sup.act.rf_on(source))
            except MaintenanceRefused:
                self._test_lease(device, running=False)
                raise
            return {"device": device, "power_kw": power, "lease_s": self.test_lease_s}
        if device in self.sup.line.devices and args.get("read", True):
            return {"device": device, "status": await self._raw_status(device)}
        raise MaintenanceRefused("device_test", f"nothing to test on {device!r} with {args}")

    def _test_lease(self, device: str, running: bool) -> None:
        """A running device test lives on a lease too (renewed by repeating the command): a
        lost maintenance client never leaves gas flowing or the torch burning."""
        if running:
            self.test_leases[device] = time.monotonic() + self.test_lease_s
        else:
            self.test_leases.pop(device, None)

    async def _end_test(self, device: str) -> None:
        source = "device-test-lease"
        if device == "rf":
            await self.sup.act.rf_off(source, urgent=True)
        else:
            await self.sup.act.set_flow_slpm(device, 0.0, source, urgent=True)

    async def _raw_status(self, device: str) -> Any:
        machine = self.sup.machine
        reader: Any
        if device == "rf":
            reader = machine.rf
        elif device == "safety_io":
            reader = machine.safety_io
        elif device in machine.mfcs:
            reader = machine.mfcs[device]
        elif device in machine.axes:
            reader = machine.axes[device]
        else:
            reader = machine.gauge
        sample = await reader.read()
        return _asdict(sample)

    # -- lifecycle -------------------------------------------------------------------------
    async def leave(self, user: str) -> None:
        """Back to production: every device to idle."""
        source = f"maintenance_exit:{user}"
        for axis in list(self.leases):
            self.leases.pop(axis, None)
        self.test_leases.clear()
        await asyncio.gather(*(self._end_motion(a, source) for a in AXIS_NAMES),
                             return_exceptions=True)
        await asyncio.gather(*(self.sup.act.set_flow_slpm(m, 0.0, source) for m in MFC_NAMES),
                             return_exceptions=True)
        await self.sup.make_idle(source)

    async def watchdog(self) -> None:
        """Stop every jog whose lease ran out, and any jog faster than a door now allows."""
        while True:
            await asyncio.sleep(WATCHDOG_S)
            now = time.monotonic()
            for device, ends_at in list(self.test_leases.items()):
                if ends_at <= now or self.refusal("device_test") is not None:
                    self.test_leases.pop(device, None)
                    log.warning("maintenance.test_ended", device=device)
                    try:
                        await self._end_test(device)
                    except Exception as exc:  # the device may be the lost one
                        log.error("maintenance.test_end_failed", device=device,  # noqa: TRY400
                                  error=str(exc))
            for axis, lease in list(self.leases.items()):
                if lease.target_mm is not None and self._arrived(axis, lease.target_mm):
                    self.leases.pop(axis, None)  # a move that has arrived needs no lease
                    continue
                too_fast = lease.speed > self.speed_limit(axis) + 1e-9
                if lease.expires_at <= now or too_fast or self.refusal("jog") is not None:
                    self.leases.pop(axis, None)
                    self.lease_expiries += 1
                    log.warning("maintenance.jog_stopped", axis=axis, lease_expired=not too_fast)
                    self.pending_stops.add(axis)
            for axis in sorted(self.pending_stops):
                try:
                    await self._end_motion(axis, "jog-lease")
                except Exception as exc:  # the axis may be the lost device: retried next tick
                    log.error("maintenance.stop_failed", axis=axis, error=str(exc))  # noqa: TRY400 - expected when the link is down


def _asdict(sample: Any) -> Any:
    if dataclasses.is_dataclass(sample) and not isinstance(sample, type):
        return {k: (sorted(v) if isinstance(v, frozenset) else v)
                for k, v in dataclasses.asdict(sample).items()}
    return repr(sample)
