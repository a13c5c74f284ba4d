"""Safe-state postures, as data (domain.md, safe-state rules 1-3).

A posture says, for each part of the machine, where it must go. The order of ``STEPS`` is the
order of the writes: RF first, always, then precursors, then the rest."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from controller.safety.interlocks import Reaction


class Rf(Enum):
    OFF = "off"
    IDLE = "idle"  # plasma kept at idle power (hold)
    KEEP = "keep"


class Gases(Enum):
    PURGE = "purge"  # process gases to their purge flows
    OFF = "off"  # every gas off, master valve closed
    KEEP = "keep"


class Carriage(Enum):
    STOP = "stop"  # decelerate to a stop where it is
    NEAREST_TURNING_POINT = "nearest_turning_point"
    PARK = "park"
    KEEP = "keep"


class Spindle(Enum):
    COOLING = "cooling"  # keep turning at the cooling speed: a hot rod must not sag
    KEEP = "keep"
    UNPOWERED = "unpowered"  # E-stop: the drives have lost power anyway


@dataclass(frozen=True)
class Posture:
    name: str
    rf: Rf
    precursors_off: bool
    precursor_valve_closed: bool
    gases: Gases
    carriage: Carriage
    torch_slide_park: bool
    spindle: Spindle
    heaters_off: bool = True


TRIP = Posture("trip", Rf.OFF, True, True, Gases.PURGE, Carriage.STOP, True, Spindle.COOLING)
TRIP_GAS = Posture("trip_gas", Rf.OFF, True, True, Gases.OFF, Carriage.STOP, True,
                   Spindle.COOLING)
ESTOP = Posture("estop", Rf.OFF, True, True, Gases.PURGE, Carriage.KEEP, False,
                Spindle.UNPOWERED)
FLAME_OUT = Posture("flame_out", Rf.OFF, True, True, Gases.PURGE, Carriage.STOP, False,
                    Spindle.KEEP)
HOLD = Posture("hold", Rf.IDLE, True, True, Gases.KEEP, Carriage.NEAREST_TURNING_POINT, False,
               Spindle.KEEP)

POSTURE_FOR_REACTION = {
    Reaction.ESTOP: ESTOP,
    Reaction.TRIP: TRIP,
    Reaction.TRIP_GAS: TRIP_GAS,
    Reaction.SUSPEND: FLAME_OUT,
}
