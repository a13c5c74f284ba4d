"""Judging the telemetry: the interlock signals, which interlocks trip, deviation alarms and
early warnings.

Nothing here acts on the machine: the judge annunciates (raises and clears alarms) and says
which interlocks are tripped; the supervisor decides the reaction."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from controller.config.line import AXIS_NAMES, MFC_NAMES, PLASMA_GASES, PRECURSORS, LineConfig
from controller.machine.polling import link_lost
from controller.machine.telemetry import Telemetry
from controller.safety.alarms import AlarmManager
from controller.safety.interlocks import Interlock, Signals, evaluate
from controller.safety.states import State
from controller.safety.writer import Actuators


def build_signals(telemetry: Telemetry, line: LineConfig, *, plasma_expected: bool,
                  state: State) -> Signals:
    """The interlock inputs from the latest telemetry. Until the safety I/O has answered, its
    inputs read as healthy (analogue ones at their limits): a start is refused for want of
    that link instead."""
    t = telemetry
    io = t.safety
    rf = t.rf
    lit = bool((rf is not None and rf.plasma_lit) or (io is not None and io.plasma_optical))
    reflected = 0.0
    if rf is not None and rf.forward_kw > 1.0:
        reflected = rf.reflected_kw / rf.forward_kw
    io_cfg = line.safety_io()

    def lost(device: str) -> bool:
        return link_lost(t, device)

    base = Signals(
        plasma_lit=lit,
        plasma_expected=plasma_expected,
        # Wherever the plasma is meant to burn: Execute, and held at idle power (rule 2).
        flame_out=plasma_expected and not lit and state in PLASMA_HELD_STATES,
        rf_fault=bool(rf is not None and rf.fault),
        reflected_ratio=reflected,
        drive_alarm=any(a.alarm for a in t.axes.values()),
        link_rf=not lost("rf"),
        link_safety_io=not lost("safety_io"),
        link_drives=not any(lost(a) for a in AXIS_NAMES),
        link_plasma_gas=not any(lost(g) for g in PLASMA_GASES),
        link_precursor=not any(lost(g) for g in PRECURSORS),
        link_gauge=not lost("diameter_gauge"),
        rf_on=bool(rf is not None and rf.rf_on),
        water_flow_l_min=io_cfg.water_flow_min_l_min,
        water_temp_c=io_cfg.water_temp_max_c,
        exhaust_draft_pa=io_cfg.exhaust_trip_pa - 1,
    )
    if io is None:
        return base
    return replace(
        base,
        estop_ok=io.estop_ok,
        safety_relay_ok=io.safety_relay_ok,
        doors_closed=io.doors_closed,
        scrubber_ready=io.scrubber_ready,
        gas_supply_ok=io.gas_supply_ok,
        water_flow_l_min=io.water_flow_l_min,
        water_temp_c=io.water_temp_c,
        exhaust_draft_pa=io.exhaust_draft_pa,
        gas_detector_ppm=io.gas_detector_ppm,
        room_o2_pct=io.room_o2_pct,
    )


@dataclass(frozen=True)
class GapTarget:
    """The coil gap the current layer asks for, and the preform diameter it is measured to."""

    coil_gap_mm: float
    diameter_mm: float


PLASMA_HELD_STATES = frozenset({State.EXECUTE, State.HOLDING, State.HELD, State.UNHOLDING,
                                State.UNSUSPENDING, State.STARTING})


class Judge:
    """Remembers which interlocks are tripped (to annunciate only the changes) and how long
    each early-warning condition has held."""

    def __init__(self, line: LineConfig, telemetry: Telemetry, alarms: AlarmManager,
                 act: Actuators) -> None:
        self.line = line
        self.telemetry = telemetry
        self.alarms = alarms
        self.act = act
        self._tripped: set[str] = set()
        self._margin_since: dict[str, float] = {}

    def mark_tripped(self, interlock_id: str) -> None:
        """An interlock raised outside the cycle (a write that failed under the executor)."""
        self._tripped.add(interlock_id)

    def judge(self, signals: Signals, state: State, gap: GapTarget | None, now: float,
              react: Callable[[list[Interlock]], None] | None = None) -> list[Interlock]:
        """Hand the tripped interlocks (worst first) to ``react``, then annunciate interlock
        changes and judge deviations and margins (as of ``state``, the state they were
        detected in); returns the tripped interlocks. The reaction comes first: the alarms'
        records and live feeds would otherwise delay a trip's writes (rule 7)."""
        tripped = evaluate(signals, self.line)
        if tripped and react is not None:
            react(tripped)
        tripped_ids = {i.id for i in tripped}
        value = state.value
        for interlock_id in self._tripped - tripped_ids:
            self.alarms.evaluate(f"interlock.{interlock_id}", False, now, machine_state=value)
        for interlock in tripped:
            if interlock.id not in self._tripped:
                self.alarms.evaluate(f"interlock.{interlock.id}", True, now, machine_state=value)
        self._tripped = tripped_ids
        if state is State.EXECUTE:
            self._judge_deviations(now, value, gap)
        return tripped

    def _judge_deviations(self, now: float, state: str, gap: GapTarget | None) -> None:
        commanded = self.act.commanded
        for name in MFC_NAMES:
            reading = self.telemetry.mfcs.get(name)
            setpoint = commanded.flows_slpm.get(name)
            if reading is not None and setpoint is not None:
                self.alarms.evaluate_deviation(f"{name}.flow", reading.mass_slpm, setpoint, now,
                                               machine_state=state)
        rf = self.telemetry.rf
        if rf is not None and commanded.rf_on and rf.setpoint_kw == commanded.power_kw:
            self.alarms.evaluate_deviation("rf.power", rf.forward_kw, commanded.power_kw, now,
                                           machine_state=state)
        self._judge_gap(now, state, gap)
        self._judge_margins(now, state)

    def _judge_gap(self, now: float, state: str, target: GapTarget | None) -> None:
        slide = self.telemetry.axes.get("torch_slide")
        if slide is None or target is None:
            return
        at_zero = self.line.geometry.coil_to_axis_at_slide_zero_mm
        gap = at_zero + slide.position_mm - target.diameter_mm / 2
        self.alarms.evaluate_deviation("torch_slide.gap", gap, target.coil_gap_mm, now,
                                       machine_state=state)

    def _judge_margins(self, now: float, state: str) -> None:
        """Early warnings: a value near its trip for a while, before the interlock acts."""
        io, rf, cfg = self.telemetry.safety, self.telemetry.rf, self.line.safety_io()
        sup = self.line.supervision
        conditions: dict[str, bool] = {}
        if io is not None:
            conditions["water_flow_margin"] = (
                io.water_flow_l_min < cfg.water_flow_min_l_min + sup.water_flow_margin_l_min)
            conditions["exhaust_margin"] = (
                io.exhaust_draft_pa > cfg.exhaust_trip_pa - sup.exhaust_margin_pa)
        if rf is not None and rf.forward_kw > 1.0:
            trip = self.line.rf().reflected_trip_fraction
            conditions["reflected_power_margin"] = (
                rf.reflected_kw / rf.forward_kw > trip * sup.reflected_warning_fraction)
        wall = time.monotonic()
        for tag, condition in conditions.items():
            since = self._margin_since.get(tag)
            if condition and since is None:
                self._margin_since[tag] = wall
            elif not condition:
                self._margin_since.pop(tag, None)
            active = condition and (
                wall - self._margin_since.get(tag, wall) >= sup.warning_delay_s)
            if active != self.alarms.status(tag).condition:
                self.alarms.evaluate(tag, active, now, machine_state=state)
