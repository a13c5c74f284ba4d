"""The safety envelope: a pure function of everything known at one instant to what each
actuator may do and must do (domain.md rules 1, 6, 10, 11).

It is data first. ``STATE_LIMITS`` says what each PackML state allows in production,
``MAINTENANCE_LIMITS`` what maintenance mode allows before a device test lifts it, and
``CONDITION_LIMITS`` what each active condition (a tripped interlock, a door open, a latched
heartbeat loss) allows. Limits combine by taking the most restrictive value of every column,
so the worst condition wins and conditions add up (E-stop and a gas alarm together: drives
unpowered and the master valve closed). ``docs/safety.md`` prints these tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import IntEnum
from operator import attrgetter

from controller.config.line import (
    LINEAR_AXES,
    PRECURSORS,
    PROCESS_GASES,
    LineConfig,
    cooling_speed_rpm,
)
from controller.safety.interlocks import INTERLOCKS
from controller.safety.states import Mode, State


class RfLimit(IntEnum):
    OFF = 0  # RF off, the PLC's RF permit dropped
    TEST = 1  # a maintenance device test: at most the configured test power
    FULL = 2  # up to the generator's configured maximum


class GasLimit(IntEnum):
    OFF = 0  # every gas off, master and precursor valves closed
    PURGE = 1  # process gases at most their purge flows; precursors off, precursor valve closed
    PROCESS = 2  # process gases up to full scale; precursors off, precursor valve closed
    DEPOSIT = 3  # every gas up to full scale, precursor valve may open


class MotionLimit(IntEnum):
    STOPPED = 0  # no axis may move (the drives have lost power, or must not move)
    SETUP = 1  # setup speed: a configured fraction of maximum (IEC 60204-1 reduced speed)
    FULL = 2  # up to the axis's configured maximum


@dataclass(frozen=True)
class Limits:
    """One row of a table: the most each actuator may do under one state or condition."""

    rf: RfLimit = RfLimit.FULL
    gases: GasLimit = GasLimit.DEPOSIT
    heaters: bool = True
    motion: MotionLimit = MotionLimit.FULL
    fan_required: bool = False  # the exhaust fan must run (never switched off by the envelope)

    def combine(self, other: Limits) -> Limits:
        return Limits(
            rf=min(self.rf, other.rf),
            gases=min(self.gases, other.gases),
            heaters=self.heaters and other.heaters,
            motion=min(self.motion, other.motion),
            fan_required=self.fan_required or other.fan_required,
        )


NO_LIMIT = Limits()
_OFF = RfLimit.OFF
_TRIP_PURGE = Limits(rf=_OFF, gases=GasLimit.PURGE, heaters=False)  # rule 1: purge allowed
_TRIP_NO_PURGE = Limits(rf=_OFF, gases=GasLimit.OFF, heaters=False)  # rule 1: would vent
_TRIP_GAS_IN_ROOM = Limits(rf=_OFF, gases=GasLimit.OFF, heaters=False, fan_required=True)
_DOORS_OPEN = Limits(rf=_OFF, motion=MotionLimit.SETUP)  # rule 6

STATE_LIMITS: Mapping[State, Limits] = {
    State.IDLE: Limits(rf=_OFF, gases=GasLimit.PURGE, heaters=False),
    # Starting may resume an interrupted run: it re-ignites and re-establishes the layer.
    State.STARTING: NO_LIMIT,
    State.EXECUTE: NO_LIMIT,
    State.COMPLETING: Limits(gases=GasLimit.PROCESS, heaters=False),  # ramp down, cool
    State.COMPLETE: Limits(rf=_OFF, gases=GasLimit.PURGE, heaters=False),
    State.RESETTING: Limits(rf=_OFF, gases=GasLimit.PURGE, heaters=False),
    State.HOLDING: Limits(gases=GasLimit.PROCESS, heaters=False),  # rule 3: precursors off
    State.HELD: Limits(gases=GasLimit.PROCESS, heaters=False),  # plasma at idle power
    State.UNHOLDING: NO_LIMIT,
    State.SUSPENDING: Limits(rf=_OFF, gases=GasLimit.PURGE, heaters=False),  # rule 2
    State.SUSPENDED: Limits(rf=_OFF, gases=GasLimit.PURGE, heaters=False),
    State.UNSUSPENDING: NO_LIMIT,
    State.STOPPING: Limits(gases=GasLimit.PROCESS, heaters=False),  # controlled ramp down
    State.STOPPED: Limits(rf=_OFF, gases=GasLimit.PURGE, heaters=False),
    State.ABORTING: Limits(rf=_OFF, gases=GasLimit.PURGE, heaters=False),
    State.ABORTED: Limits(rf=_OFF, gases=GasLimit.PURGE, heaters=False),
    State.CLEARING: Limits(rf=_OFF, gases=GasLimit.PURGE, heaters=False),
}

# Maintenance mode before any device test lifts it: nothing burns, nothing flows but a purge.
MAINTENANCE_LIMITS = Limits(rf=_OFF, gases=GasLimit.PURGE, heaters=False)
# What a device test under way lifts, in maintenance mode only (conditions still apply).
TEST_LIFTS: Mapping[str, Limits] = {
    "rf": Limits(rf=RfLimit.TEST, gases=GasLimit.PURGE, heaters=False),
    **{gas: Limits(rf=_OFF, gases=GasLimit.PROCESS, heaters=False) for gas in PROCESS_GASES},
    **{gas: Limits(rf=_OFF, gases=GasLimit.DEPOSIT, heaters=False) for gas in PRECURSORS},
}

CONDITION_LIMITS: Mapping[str, Limits] = {
    # Tripped interlocks (one row each: a test holds the table to INTERLOCKS).
    "estop": Limits(rf=_OFF, gases=GasLimit.OFF, heaters=False, motion=MotionLimit.STOPPED),
    "safety_relay_open": _TRIP_NO_PURGE,  # the relay closes the valves itself: never fight it
    "door_open": _DOORS_OPEN,
    "water_flow_low": _TRIP_PURGE,
    "water_temp_high": _TRIP_PURGE,
    "exhaust_lost": _TRIP_NO_PURGE,
    "scrubber_not_ready": _TRIP_NO_PURGE,
    "gas_supply_low": _TRIP_PURGE,
    "gas_detected": _TRIP_GAS_IN_ROOM,
    "o2_enrichment": _TRIP_GAS_IN_ROOM,
    "rf_fault": _TRIP_PURGE,
    "reflected_power_high": _TRIP_PURGE,
    "drive_alarm": _TRIP_PURGE,
    "link_rf": _TRIP_PURGE,
    "link_safety_io": _TRIP_PURGE,
    "link_drives": _TRIP_PURGE,
    "link_plasma_gas": _TRIP_PURGE,
    "link_precursor": Limits(gases=GasLimit.PROCESS),  # rule 2: precursor valve closed
    "flame_out": _TRIP_PURGE,
    "link_gauge": NO_LIMIT,  # open loop from the forecast (rule 2)
    # Levels that are not interlocks.
    "doors_open": _DOORS_OPEN,  # any door, plasma or not (rule 6)
    "no_plasma": Limits(gases=GasLimit.PROCESS, heaters=False),  # no precursor without plasma
    "heartbeat_latched": Limits(rf=_OFF, gases=GasLimit.PURGE, heaters=False,
                                fan_required=True),  # the PLC acts alone (rule 11)
}
# Conditions after which a purge would push residual gas into the room (rule 1): once seen,
# the post-trip purge waits for a recorded command.
NO_PURGE_CONDITIONS = frozenset(
    c for c, limits in CONDITION_LIMITS.items() if limits.gases is GasLimit.OFF
)
HARDWARE_RATED: Mapping[str, str] = {
    # Which functions the hardware also guarantees, whatever the software does.
    "estop": "safety relay: RF enable dropped, NC gas valves closed, drives unpowered",
    "safety_relay_open": "safety relay: RF enable dropped, NC gas valves closed",
    "heartbeat_latched": "safety PLC: RF enable, precursor valve, heaters off; master valve "
                         "after the purge; exhaust fan on",
}


@dataclass(frozen=True)
class EnvelopeInputs:
    """Everything the envelope looks at, as of one safety cycle."""

    state: State = State.IDLE
    mode: Mode = Mode.PRODUCTION
    conditions: frozenset[str] = frozenset()
    plasma_lit: bool = False
    doors_closed: bool = True
    rod_temperature_c: float | None = None  # None: not known (the I/O has not answered)
    devices_under_test: frozenset[str] = frozenset()
    master_valve_open: bool = False  # commanded or read back: the fan must then run


@dataclass(frozen=True)
class Envelope:
    """What is allowed and required, per actuator, as of one safety cycle."""

    limits: Limits
    rf: RfLimit
    max_power_kw: float
    flow_max_slpm: dict[str, float]
    master_valve_allowed: bool
    precursor_valve_allowed: bool
    heaters_allowed: bool
    fan_required: bool
    axis_max_speed: dict[str, float]
    spindle_min_rpm: float  # the hot-rod rule: > 0 while the rod must keep turning
    rod_hot: bool
    reasons: dict[str, str] = field(default_factory=dict)  # actuator -> why it is limited

    @property
    def rf_permitted(self) -> bool:
        return self.rf is not RfLimit.OFF


def active_limits(inputs: EnvelopeInputs) -> Limits:
    """The combined row: the state's (or maintenance's, lifted by its device tests), then
    every active condition."""
    if inputs.mode is Mode.MAINTENANCE:
        base = MAINTENANCE_LIMITS
        for device in inputs.devices_under_test:
            lift = TEST_LIFTS.get(device)
            if lift is not None:
                base = Limits(rf=max(base.rf, lift.rf), gases=max(base.gases, lift.gases),
                              heaters=False, motion=base.motion)
    else:
        base = STATE_LIMITS[inputs.state]
    return combine(base, (CONDITION_LIMITS.get(c, NO_LIMIT) for c in _conditions(inputs)))


def combine(base: Limits, rows: Iterable[Limits]) -> Limits:
    result = base
    for row in rows:
        result = result.combine(row)
    return result


def _conditions(inputs: EnvelopeInputs) -> set[str]:
    conditions = set(inputs.conditions)
    if not inputs.doors_closed:
        conditions.add("doors_open")
    if not inputs.plasma_lit and inputs.mode is Mode.PRODUCTION:
        conditions.add("no_plasma")
    return conditions


def _why(inputs: EnvelopeInputs, column: str, allowed: object) -> str:
    """The first state or condition that sets this column to ``allowed``: for refusals."""
    for condition in sorted(_conditions(inputs)):
        if getattr(CONDITION_LIMITS.get(condition, NO_LIMIT), column) == allowed:
            return f"condition {condition}"
    if inputs.mode is Mode.MAINTENANCE:
        return "maintenance mode"
    return f"state {inputs.state.value}"


# Everything the envelope depends on but the rod's temperature, which counts only through
# whether the rod is hot: a cycle's envelope equals the last one's while these are unchanged.
_KEY_FIELDS = attrgetter(*(f.name for f in fields(EnvelopeInputs)
                           if f.name != "rod_temperature_c"))
_last: tuple[LineConfig, tuple[object, ...], Envelope] | None = None


def compute(inputs: EnvelopeInputs, line: LineConfig) -> Envelope:
    """The envelope for these inputs. The safety cycle asks 100 times a second and the
    answer rarely changes, so the last one is kept (it is immutable; so is the line)."""
    global _last  # noqa: PLW0603 - a one-entry memo of a pure function
    stop_c = line.safety_io().rod_rotation_stop_c
    rod_hot = inputs.rod_temperature_c is None or inputs.rod_temperature_c > stop_c
    key = (rod_hot, *_KEY_FIELDS(inputs))
    if _last is not None and _last[0] is line and _last[1] == key:
        return _last[2]
    envelope = _compute(inputs, line, rod_hot)
    _last = (line, key, envelope)
    return envelope


def _compute(inputs: EnvelopeInputs, line: LineConfig, rod_hot: bool) -> Envelope:
    limits = active_limits(inputs)
    sup = line.supervision
    reasons: dict[str, str] = {}
    max_power = {RfLimit.OFF: 0.0, RfLimit.TEST: sup.device_test_max_power_kw,
                 RfLimit.FULL: line.rf().max_power_kw}[limits.rf]
    if limits.rf is not RfLimit.FULL:
        reasons["rf"] = _why(inputs, "rf", limits.rf)
    flows: dict[str, float] = {}
    for name in (*PROCESS_GASES, *PRECURSORS):
        level = limits.gases
        if inputs.mode is Mode.MAINTENANCE and name not in inputs.devices_under_test:
            level = min(level, GasLimit.PURGE)
        flows[name] = _flow_max(line, name, level)
        if flows[name] < line.mfc(name).full_scale_slpm:
            reasons[name] = _why(inputs, "gases", limits.gases)
    precursor_valve = any(flows[p] > 0 for p in PRECURSORS)
    master_valve = limits.gases >= GasLimit.PURGE
    if not master_valve:
        reasons["gas_master_valve"] = _why(inputs, "gases", limits.gases)
    if not precursor_valve:
        reasons["precursor_valve"] = _why(inputs, "gases", limits.gases)
    if not limits.heaters:
        reasons["heaters"] = _why(inputs, "heaters", False)
    speeds: dict[str, float] = {}
    for axis in ("spindle", *LINEAR_AXES):
        cfg = line.axis(axis)
        speeds[axis] = {MotionLimit.STOPPED: 0.0,
                        MotionLimit.SETUP: cfg.setup_speed,
                        MotionLimit.FULL: cfg.max_speed}[limits.motion]
        if limits.motion is not MotionLimit.FULL:
            reasons[axis] = _why(inputs, "motion", limits.motion)
    cooling = cooling_speed_rpm(line)
    spindle_min = min(cooling, speeds["spindle"]) if rod_hot else 0.0
    fan = limits.fan_required or inputs.master_valve_open
    return Envelope(
        limits=limits, rf=limits.rf, max_power_kw=max_power, flow_max_slpm=flows,
        master_valve_allowed=master_valve, precursor_valve_allowed=precursor_valve,
        heaters_allowed=limits.heaters, fan_required=fan, axis_max_speed=speeds,
        spindle_min_rpm=spindle_min, rod_hot=rod_hot, reasons=reasons,
    )


def _flow_max(line: LineConfig, name: str, level: GasLimit) -> float:
    mfc = line.mfc(name)
    if level is GasLimit.OFF or (name in PRECURSORS and level < GasLimit.DEPOSIT):
        return 0.0
    if level is GasLimit.PURGE:
        return mfc.purge_slpm
    return mfc.full_scale_slpm


def unknown_conditions() -> set[str]:
    """Interlocks without a row in CONDITION_LIMITS (a test keeps this empty)."""
    return {i.id for i in INTERLOCKS} - set(CONDITION_LIMITS)
