"""The interlock matrix, as data: which signal, which condition, where it applies, what the
controller does about it. Tests and the published fault matrix are generated from this table.

A signal is a named value of ``Signals`` (safety inputs, device health, link status); its
limit is either a literal or the name of a field of the line's ``SafetyIoConfig`` / RF
config, so no threshold is a constant here."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from controller.config.line import LineConfig


class Reaction(Enum):
    ESTOP = "estop"  # drives have lost power: RF off, gases safe, record; nothing to move
    TRIP = "trip"  # safe state, process gases to purge, run to Aborted
    TRIP_GAS = "trip_gas"  # safe state with every gas off and the master valve closed
    SUSPEND = "suspend"  # flame-out / lost precursor controller: suspend, purge, re-ignite
    ALARM = "alarm"  # record and annunciate; the run goes on (e.g. open loop)


Op = Literal["false", "true", "below", "above"]


@dataclass(frozen=True)
class Signals:
    """What the interlocks look at, assembled from the latest telemetry each safety poll."""

    estop_ok: bool = True
    safety_relay_ok: bool = True
    doors_closed: bool = True
    scrubber_ready: bool = True
    gas_supply_ok: bool = True
    water_flow_l_min: float = 0.0
    water_temp_c: float = 0.0
    exhaust_draft_pa: float = 0.0
    gas_detector_ppm: float = 0.0
    room_o2_pct: float = 20.9
    rf_fault: bool = False
    reflected_ratio: float = 0.0
    drive_alarm: bool = False
    plasma_lit: bool = False
    plasma_expected: bool = False  # the controller has lit the plasma and expects it on
    flame_out: bool = False  # plasma_expected and not lit, no other cause
    link_rf: bool = True
    link_safety_io: bool = True
    link_drives: bool = True
    link_plasma_gas: bool = True  # O2 and Ar controllers
    link_precursor: bool = True  # SiCl4 and dopant controllers
    link_gauge: bool = True
    rf_on: bool = False


@dataclass(frozen=True)
class Interlock:
    id: str
    description: str
    signal: str
    op: Op
    limit: float | str | None = None  # literal, or a config field name
    reaction: Reaction = Reaction.TRIP
    only_with_plasma: bool = False  # applies only while the plasma is lit or expected

    def limit_value(self, line: LineConfig) -> float:
        if isinstance(self.limit, str):
            for source in (line.safety_io(), line.rf()):
                if hasattr(source, self.limit):
                    return float(getattr(source, self.limit))
            raise KeyError(f"interlock {self.id}: no config field {self.limit!r}")
        if self.limit is None:
            raise ValueError(f"interlock {self.id}: {self.op} needs a limit")
        return float(self.limit)

    def tripped(self, signals: Signals, line: LineConfig) -> bool:
        return self._trips(signals, _limits(line))

    def _trips(self, signals: Signals, limits: dict[str, float]) -> bool:
        if self.only_with_plasma and not (signals.plasma_lit or signals.plasma_expected):
            return False
        value = getattr(signals, self.signal)
        if self.op == "false":
            return not value
        if self.op == "true":
            return bool(value)
        if self.op == "below":
            return float(value) < limits[self.id]
        return float(value) > limits[self.id]


INTERLOCKS: tuple[Interlock, ...] = (
    Interlock("estop", "E-stop chain open", "estop_ok", "false", reaction=Reaction.ESTOP),
    Interlock("safety_relay_open", "safety relay open", "safety_relay_ok", "false"),
    Interlock("door_open", "door opened with plasma on", "doors_closed", "false",
              only_with_plasma=True),
    Interlock("water_flow_low", "cooling water flow low", "water_flow_l_min", "below",
              "water_flow_min_l_min"),
    Interlock("water_temp_high", "cooling water too warm", "water_temp_c", "above",
              "water_temp_max_c"),
    # Rule 1: purging with the exhaust or the scrubber down would push gas into the room.
    Interlock("exhaust_lost", "exhaust draft lost", "exhaust_draft_pa", "above",
              "exhaust_trip_pa", reaction=Reaction.TRIP_GAS),
    Interlock("scrubber_not_ready", "scrubber not ready", "scrubber_ready", "false",
              reaction=Reaction.TRIP_GAS),
    Interlock("gas_supply_low", "gas supply pressure low", "gas_supply_ok", "false"),
    Interlock("gas_detected", "acid gas (Cl2 / HCl / HF) detected", "gas_detector_ppm",
              "above", "gas_detector_trip_ppm", reaction=Reaction.TRIP_GAS),
    Interlock("o2_enrichment", "room O2 enrichment", "room_o2_pct", "above",
              "room_o2_trip_pct", reaction=Reaction.TRIP_GAS),
    Interlock("rf_fault", "RF generator fault", "rf_fault", "true"),
    Interlock("reflected_power_high", "reflected RF power high", "reflected_ratio", "above",
              "reflected_trip_fraction", only_with_plasma=True),
    Interlock("drive_alarm", "servo drive alarm", "drive_alarm", "true"),
    Interlock("link_rf", "lost link to the RF generator", "link_rf", "false"),
    Interlock("link_safety_io", "lost link to the safety I/O", "link_safety_io", "false"),
    Interlock("link_drives", "lost link to a servo drive", "link_drives", "false"),
    Interlock("link_plasma_gas", "lost link to the O2 / Ar controller with plasma lit",
              "link_plasma_gas", "false", only_with_plasma=True),
    Interlock("link_precursor", "lost link to the SiCl4 / dopant controller",
              "link_precursor", "false", reaction=Reaction.SUSPEND),
    Interlock("flame_out", "plasma lost (flame-out)", "flame_out", "true",
              reaction=Reaction.SUSPEND),
    Interlock("link_gauge", "lost the diameter gauge: open loop from the forecast",
              "link_gauge", "false", reaction=Reaction.ALARM),
)

INTERLOCKS_BY_ID = {i.id: i for i in INTERLOCKS}
SEVERITY = {Reaction.ESTOP: 0, Reaction.TRIP_GAS: 1, Reaction.TRIP: 2, Reaction.SUSPEND: 3,
            Reaction.ALARM: 4}


_last_limits: tuple[LineConfig, dict[str, float]] | None = None


def _limits(line: LineConfig) -> dict[str, float]:
    """Each comparing interlock's limit on ``line``, looked up once per line configuration
    (the safety cycle judges 100 times a second; a process has one line, tests a few)."""
    global _last_limits  # noqa: PLW0603 - a one-entry cache of an immutable configuration
    if _last_limits is None or _last_limits[0] is not line:
        _last_limits = (line, {i.id: i.limit_value(line) for i in INTERLOCKS
                               if i.op in ("below", "above")})
    return _last_limits[1]


def evaluate(signals: Signals, line: LineConfig) -> list[Interlock]:
    """Every interlock tripped by these signals, the most severe reaction first."""
    limits = _limits(line)
    tripped = [i for i in INTERLOCKS if i._trips(signals, limits)]
    return sorted(tripped, key=lambda i: SEVERITY[i.reaction])


def blocking_start(signals: Signals, line: LineConfig) -> list[Interlock]:
    """Interlocks that forbid starting a run (everything but advisory alarms)."""
    return [i for i in evaluate(signals, line) if i.reaction is not Reaction.ALARM
            and i.id != "flame_out"]
