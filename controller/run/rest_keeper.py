"""Never unsupervised away from rest (domain.md rule 11).

Whenever the unit rests in production (Idle, Complete, Stopped, Aborted) but the machine does
not, this sequence brings it there, in order, and says which step it is on and why:
1. purge for ``post_trip_purge_s`` (process time) where purging is allowed; after a trip that
   forbids it (gas detector, O2 enrichment, exhaust, scrubber) every gas stays off and a purge
   waits for a recorded command;
2. every gas off, master and precursor valves closed, heaters off;
3. the spindle at cooling speed until the rod is below ``rod_rotation_stop_c``, then stopped
   (a hot rod that is not turning is an alarm: restarting it is the operator's command);
4. carriage and torch slide parked, where the drives have power and know where they are.

Every write goes through the single writer, so the envelope still governs each step."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import structlog

from controller.config.line import PRECURSORS, PROCESS_GASES, LineConfig
from controller.machine.telemetry import Telemetry
from controller.run.process_clock import ProcessClock
from controller.safety.envelope import NO_PURGE_CONDITIONS, Envelope, EnvelopeInputs
from controller.safety.reconciler import Reconciler
from controller.safety.states import Mode, State, StateMachine
from controller.safety.writer import Actuators


class RestingLine(Protocol):
    """What the rest keeper needs of the supervisor (which holds it): no import of it, so no
    circle."""

    line: LineConfig
    clock: ProcessClock
    sm: StateMachine
    telemetry: Telemetry
    act: Actuators
    reconciler: Reconciler

    @property
    def trip_cause(self) -> str | None: ...

    def link_alive(self, device: str) -> bool: ...
    def envelope_inputs(self) -> EnvelopeInputs: ...
    def envelope_now(self) -> Envelope: ...

log = structlog.get_logger(__name__)

class PurgeRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


RESTING_STATES = frozenset({State.IDLE, State.COMPLETE, State.STOPPED, State.ABORTED})
SOURCE = "rest"
PERIOD_S = 0.1


class RestKeeper:
    def __init__(self, sup: RestingLine) -> None:
        self.sup = sup
        self.step: str | None = None  # what it is doing now; None when at rest
        self.why: str = ""
        self.no_purge_seen = False
        self._rested_since: float | None = None  # process time the unit came to rest
        self._parked = False

    # -- what rest means ---------------------------------------------------------------------
    def away_from_rest(self) -> list[str]:
        """What is still away from rest (empty: at rest)."""
        sup = self.sup
        t, c = sup.telemetry, sup.act.commanded
        env = sup.reconciler.last_envelope or sup.envelope_now()
        away: list[str] = []
        if c.rf_on or (t.rf is not None and sup.link_alive("rf") and t.rf.rf_on):
            away.append("RF on")
        rest_flow = sup.line.supervision.rest_flow_slpm
        for name in (*PROCESS_GASES, *PRECURSORS):
            reading = t.mfcs.get(name) if sup.link_alive(name) else None
            if c.flows_slpm.get(name, 0.0) > 0 or (reading is not None
                                                   and reading.mass_slpm > rest_flow):
                away.append(f"{name} flowing")
        outputs = c.outputs
        io = t.safety if sup.link_alive("safety_io") else None
        effective = io.outputs_effective if io is not None else None
        away.extend(f"{valve} on"
                    for valve in ("gas_master_valve", "precursor_valve", "heater_a", "heater_b")
                    if getattr(outputs, valve)
                    or (effective is not None and getattr(effective, valve)))
        away.extend(f"{axis} moving" for axis, status in t.axes.items()
                    if sup.link_alive(axis) and status.moving and abs(status.velocity) > 0.01)
        if env.rod_hot:
            temp = "unknown" if io is None else f"{io.rod_temperature_c:.0f} C"
            away.append(f"rod hot ({temp})")
        return away

    def at_rest(self) -> bool:
        return not self.away_from_rest()

    def describe(self) -> str | None:
        """For a status line: which step, and why (None when there is nothing to do)."""
        if self.step is None:
            return None
        return f"making safe: {self.step}" + (f" ({self.why})" if self.why else "")

    async def purge(self, user: str) -> None:
        """The recorded command that purges after a trip that forbade it (rule 1), once the
        exhaust and the scrubber are back: the sequence then purges for its time and closes
        everything, as after any other trip. PurgeRefused says why not."""
        sup = self.sup
        if sup.sm.state not in RESTING_STATES or sup.sm.mode is not Mode.PRODUCTION:
            raise PurgeRefused(f"a purge runs at rest in production, not in "
                               f"{sup.sm.state.value} / {sup.sm.mode.value}")
        env = sup.act.envelope()
        if not env.master_valve_allowed:
            raise PurgeRefused("purging now would push gas into the room: "
                               + env.reasons.get("gas_master_valve", "not allowed"))
        source = f"purge:{user}"
        await sup.act.set_outputs(source, exhaust_fan=True, gas_master_valve=True,
                                  precursor_valve=False)
        await asyncio.gather(*(sup.act.set_flow_slpm(g, min(sup.line.mfc(g).purge_slpm,
                                                            env.flow_max_slpm[g]), source)
                               for g in PROCESS_GASES))
        self.no_purge_seen = False
        self._rested_since = sup.clock.now()

    # -- the sequence ------------------------------------------------------------------------
    async def watch(self) -> None:
        while True:
            await asyncio.sleep(PERIOD_S)
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a device may be lost: try again next tick
                log.warning("rest.step_failed", step=self.step, error=str(exc))

    async def _tick(self) -> None:
        sup = self.sup
        if sup.envelope_inputs().conditions & NO_PURGE_CONDITIONS \
                and sup.sm.state is not State.IDLE:
            self.no_purge_seen = True
        if sup.sm.state not in RESTING_STATES or sup.sm.mode is not Mode.PRODUCTION:
            self._rested_since = None
            self._parked = False
            self._set(None)
            if sup.sm.state is State.STARTING:
                self.no_purge_seen = False
            return
        if self._rested_since is None:
            self._rested_since = sup.clock.now()
        away = self.away_from_rest()
        if not away:
            self._set(None)
            return
        cause = sup.trip_cause or sup.sm.state.value
        if await self._purge_then_gases_off(away, cause):
            return
        await self._rod_and_axes(away, cause)

    async def _purge_then_gases_off(self, away: list[str], cause: str) -> bool:
        """True while this step is the one under way."""
        sup = self.sup
        gas_away = [a for a in away if "flowing" in a or "valve on" in a or "heater" in a]
        if not gas_away:
            return False
        assert self._rested_since is not None
        purging = sup.act.commanded.outputs.gas_master_valve and any(
            sup.act.commanded.flows_slpm.get(g, 0.0) > 0 for g in PROCESS_GASES)
        purge_s = sup.line.supervision.post_trip_purge_s
        if purging and not self.no_purge_seen and sup.clock.now() - self._rested_since < purge_s:
            left = purge_s - (sup.clock.now() - self._rested_since)
            self._set("purging", f"after {cause}, {left:.0f} s of process time left")
            return True
        self._set("gases off, valves closed", f"after {cause}")
        await asyncio.gather(*(sup.act.set_flow_slpm(g, 0.0, SOURCE)
                               for g in (*PRECURSORS, *PROCESS_GASES)))
        await sup.act.set_outputs(SOURCE, gas_master_valve=False, precursor_valve=False,
                                  heater_a=False, heater_b=False)
        return True

    async def _rod_and_axes(self, away: list[str], cause: str) -> None:
        sup = self.sup
        env = sup.act.envelope()
        if not self._parked and env.axis_max_speed.get("carriage", 0.0) > 0:
            self._parked = True
            with contextlib.suppress(Exception):  # not homed, or no power: rest without it
                await self._park()
        if env.rod_hot:
            io = sup.telemetry.safety
            temp = f"{io.rod_temperature_c:.0f} C" if io is not None else "unknown"
            self._set("cooling the rod with rotation",
                      f"rod at {temp}, stops turning below "
                      f"{sup.line.safety_io().rod_rotation_stop_c:g} C")
            return
        if any(a.startswith("spindle") for a in away) or sup.act.commanded.spindle_rpm:
            self._set("stopping the spindle", "the rod has cooled")
            await sup.act.stop_axis("spindle", SOURCE)
            return
        self._set("waiting for the axes to stop", ", ".join(away))

    async def _park(self) -> None:
        sup = self.sup
        env = sup.act.envelope()
        moves = []
        for axis, speed in (("torch_slide", sup.line.supervision.torch_slide_mm_min),
                            ("carriage", sup.line.supervision.carriage_reposition_mm_min)):
            cfg = sup.line.axis(axis)
            status = sup.telemetry.axes.get(axis)
            if cfg.park_position_mm is None or status is None or not status.homed:
                continue
            if abs(status.position_mm - cfg.park_position_mm) <= \
                    sup.line.supervision.position_tolerance_mm:
                continue
            chosen = min(speed, env.axis_max_speed.get(axis, 0.0))
            moves.append(sup.act.move_axis(axis, cfg.park_position_mm, chosen, SOURCE))
        if moves:
            self._set("parking the axes")
            await asyncio.gather(*moves)

    def _set(self, step: str | None, why: str = "") -> None:
        if step != self.step:
            log.info("rest.step", step=step, why=why)
        self.step = step
        self.why = why
