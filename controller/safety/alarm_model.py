"""The alarms' data after ISA-18.2: priorities, categories, the alarm states (and which of them
are annunciated), an alarm's definition, the events published on every visible change, an
alarm's status as the operator sees it, and the alarm errors. The state model that moves
between them is ``alarms.AlarmManager``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from controller.safety.deviation import DeviationSpec


class Priority(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


PRIORITY_RANK = {Priority.CRITICAL: 0, Priority.HIGH: 1, Priority.MEDIUM: 2, Priority.LOW: 3}


class Category(StrEnum):
    TRIP = "trip"
    DEVIATION = "deviation"
    DEVICE = "device"
    PROCESS = "process"
    SYSTEM = "system"


class AlarmState(StrEnum):
    NORMAL = "normal"
    UNACK_ACTIVE = "unack_active"
    ACK_ACTIVE = "ack_active"
    RTN_UNACK = "rtn_unack"
    SHELVED = "shelved"
    SUPPRESSED = "suppressed"  # suppressed by design (state-based)
    OUT_OF_SERVICE = "out_of_service"


# The states an operator sees in the alarm summary.
ANNUNCIATED: frozenset[AlarmState] = frozenset(
    {AlarmState.UNACK_ACTIVE, AlarmState.ACK_ACTIVE, AlarmState.RTN_UNACK}
)


@dataclass(frozen=True, slots=True)
class AlarmDefinition:
    """One alarm, as data (pydantic can validate a list of these from YAML via a TypeAdapter)."""

    id: str
    tag: str
    message: str
    priority: Priority
    category: Category
    deviation: DeviationSpec | None = None
    suppressed_in: frozenset[str] = frozenset()  # machine (PackML) states, e.g. {"Idle"}

    def __post_init__(self) -> None:
        if self.category is Category.DEVIATION and self.deviation is None:
            raise ValueError(f"deviation alarm {self.id} needs a deviation spec")

    @property
    def latching(self) -> bool:
        return self.category is Category.TRIP


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    alarm_id: str
    tag: str
    from_state: AlarmState
    to_state: AlarmState
    priority: Priority
    category: Category
    message: str
    time: float
    action: str  # activate, return, acknowledge, shelve, unshelve, shelve_expired, ...
    user: str | None = None
    value: float | None = None
    first_out: bool = False
    note: str | None = None


@dataclass(frozen=True, slots=True)
class AlarmStatus:
    definition: AlarmDefinition
    state: AlarmState
    condition: bool
    latched: bool
    first_out: bool
    value: float | None
    since: float | None
    acked_by: str | None
    shelved_until: float | None


AlarmListener = Callable[[AlarmEvent], None]


class AlarmError(Exception):
    """Base of the alarm manager's errors."""


class UnknownAlarm(AlarmError, KeyError):
    def __init__(self, key: str) -> None:
        super().__init__(f"no alarm defined for {key!r}")
        self.key = key


class AlarmRefused(AlarmError):
    def __init__(self, alarm_id: str, reason: str) -> None:
        super().__init__(f"{alarm_id}: {reason}")
        self.alarm_id = alarm_id
        self.reason = reason
