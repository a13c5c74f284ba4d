"""Alarms after ISA-18.2: definitions as data, the alarm state model, acknowledgement by a
named user, shelving with expiry, state-based suppression, out-of-service, deviation alarms with
deadband, delay and hysteresis, and first-out latching of trip alarms.

Time is injected: every call that can change an alarm takes `now` (seconds, any monotonic
origin the caller chooses), so the logic is deterministic and testable. Every visible change is
published as an `AlarmEvent` to the subscribers (the run records store them). The data (states,
definitions, events, statuses, errors) live in ``alarm_model``; its names are exported here too.

Choices made here:
- Trip alarms latch: once active they stay annunciated after the condition returns, until
  `clear_latches` (the supervisor calls it with the PackML `clear`). The first trip of a burst
  (no other trip latched) is marked `first_out`.
- Trip alarms cannot be shelved (a safety function is never hidden by an operator).
- An alarm whose condition is active when it stops being masked (shelve expiry, unshelve,
  suppression ending, return to service) is annunciated again, unacknowledged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog

from controller.config.line import SupervisionConfig
from controller.safety.alarm_model import (
    ANNUNCIATED,
    PRIORITY_RANK,
    AlarmDefinition,
    AlarmError,
    AlarmEvent,
    AlarmListener,
    AlarmRefused,
    AlarmState,
    AlarmStatus,
    Category,
    Priority,
    UnknownAlarm,
)
from controller.safety.deviation import DeviationMonitor, DeviationSpec

log = structlog.get_logger(__name__)

__all__ = [
    "ANNUNCIATED",
    "AlarmDefinition",
    "AlarmError",
    "AlarmEvent",
    "AlarmListener",
    "AlarmManager",
    "AlarmRefused",
    "AlarmState",
    "AlarmStatus",
    "Category",
    "DeviationMonitor",
    "DeviationSpec",
    "Priority",
    "UnknownAlarm",
]


# Its home is the line's configuration (supervision.alarm_shelve_max_s): a shift.
DEFAULT_MAX_SHELVE_S: float = SupervisionConfig.model_fields["alarm_shelve_max_s"].default


@dataclass(slots=True)
class _Runtime:
    definition: AlarmDefinition
    state: AlarmState = AlarmState.NORMAL
    condition: bool = False
    acked: bool = True
    latched: bool = False
    first_out: bool = False
    value: float | None = None
    since: float | None = None
    acked_by: str | None = None
    shelved_until: float | None = None
    out_of_service: bool = False
    monitor: DeviationMonitor | None = field(default=None)


class AlarmManager:
    def __init__(self, definitions: Iterable[AlarmDefinition], *,
                 max_shelve_s: float = DEFAULT_MAX_SHELVE_S) -> None:
        # A shelved alarm comes back by itself: no shelve outlasts this (ISA-18.2 shelving is
        # time-limited; a forgotten shelve would hide an alarm for good).
        self.max_shelve_s = max_shelve_s
        self._alarms: dict[str, _Runtime] = {}
        self._shelved: set[str] = set()  # ids with a shelf running
        self._by_tag: dict[str, str] = {}
        for definition in definitions:
            if definition.id in self._alarms or definition.tag in self._by_tag:
                raise ValueError(f"duplicate alarm id or tag: {definition.id} / {definition.tag}")
            monitor = DeviationMonitor(definition.deviation) if definition.deviation else None
            self._alarms[definition.id] = _Runtime(definition, monitor=monitor)
            self._by_tag[definition.tag] = definition.id
        self._machine_state: str | None = None
        self._listeners: list[AlarmListener] = []

    # -- subscribers ---------------------------------------------------------------------------
    def subscribe(self, listener: AlarmListener) -> Callable[[], None]:
        """Call `listener` with every AlarmEvent; returns a function that unsubscribes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # -- condition inputs ----------------------------------------------------------------------
    def evaluate(
        self,
        tag: str,
        active: bool,
        now: float,
        value: float | None = None,
        machine_state: str | None = None,
    ) -> list[AlarmEvent]:
        """Feed an alarm's condition (already decided by the caller, e.g. an interlock input)."""
        events = self._expire_shelves(now)
        if machine_state is not None:
            events += self.set_machine_state(machine_state, now)
        rt = self._runtime_by_tag(tag)
        rt.value = value
        rt.condition = active
        return events + self._refresh(rt, now, "activate" if active else "return")

    def evaluate_deviation(
        self,
        tag: str,
        actual: float,
        setpoint: float | None,
        now: float,
        machine_state: str | None = None,
    ) -> list[AlarmEvent]:
        """Feed a measured value and its setpoint to a deviation alarm's monitor."""
        events = self._expire_shelves(now)
        if machine_state is not None:
            events += self.set_machine_state(machine_state, now)
        rt = self._runtime_by_tag(tag)
        if rt.monitor is None:
            raise AlarmRefused(rt.definition.id, "not a deviation alarm")
        if self._suppressed_by_design(rt):
            # The delay starts afresh when suppression ends (a ramp after Idle is not an alarm).
            rt.monitor.reset()
            active = False
        else:
            active = rt.monitor.update(actual, setpoint, now)
        return events + self.evaluate(tag, active, now, value=actual)

    def set_machine_state(self, machine_state: str, now: float) -> list[AlarmEvent]:
        """The unit's state changed: apply state-based suppression to every alarm."""
        if machine_state == self._machine_state:
            return []
        self._machine_state = machine_state
        events: list[AlarmEvent] = []
        for rt in self._alarms.values():
            events += self._refresh(rt, now, "suppression")
        return events

    # -- operator actions ----------------------------------------------------------------------
    def acknowledge(self, alarm_id: str, user: str, now: float) -> AlarmEvent | None:
        """Acknowledge by a named user; None when there was nothing to acknowledge."""
        self._expire_shelves(now)
        rt = self._runtime(alarm_id)
        if rt.state not in (AlarmState.UNACK_ACTIVE, AlarmState.RTN_UNACK):
            return None
        rt.acked = True
        rt.acked_by = user
        events = self._refresh(rt, now, "acknowledge", user=user)
        return events[0] if events else None

    def acknowledge_all(self, user: str, now: float) -> list[AlarmEvent]:
        events = [self.acknowledge(alarm_id, user, now) for alarm_id in self._alarms]
        return [e for e in events if e is not None]

    def shelve(
        self, alarm_id: str, user: str, duration_s: float, now: float, reason: str
    ) -> AlarmEvent | None:
        self._expire_shelves(now)
        rt = self._runtime(alarm_id)
        if rt.definition.category is Category.TRIP:
            raise AlarmRefused(alarm_id, "trip alarms cannot be shelved")
        if duration_s <= 0:
            raise AlarmRefused(alarm_id, "a shelve needs a positive duration")
        if duration_s > self.max_shelve_s:
            raise AlarmRefused(alarm_id, f"a shelve lasts at most {self.max_shelve_s:g} s "
                                         f"({self.max_shelve_s / 3600:g} h), not {duration_s:g} s")
        if not reason.strip():
            raise AlarmRefused(alarm_id, "a shelve needs a reason")
        rt.shelved_until = now + duration_s
        self._shelved.add(alarm_id)
        events = self._refresh(rt, now, "shelve", user=user, note=reason)
        return events[0] if events else None

    def unshelve(self, alarm_id: str, user: str, now: float) -> AlarmEvent | None:
        self._expire_shelves(now)
        rt = self._runtime(alarm_id)
        if rt.shelved_until is None:
            return None
        rt.shelved_until = None
        self._shelved.discard(alarm_id)
        events = self._refresh(rt, now, "unshelve", user=user)
        return events[0] if events else None

    def set_out_of_service(
        self, alarm_id: str, user: str, now: float, reason: str
    ) -> AlarmEvent | None:
        rt = self._runtime(alarm_id)
        if rt.definition.category is Category.TRIP:
            raise AlarmRefused(alarm_id, "trip alarms cannot be taken out of service")
        rt.out_of_service = True
        events = self._refresh(rt, now, "out_of_service", user=user, note=reason)
        return events[0] if events else None

    def return_to_service(self, alarm_id: str, user: str, now: float) -> AlarmEvent | None:
        rt = self._runtime(alarm_id)
        rt.out_of_service = False
        events = self._refresh(rt, now, "return_to_service", user=user)
        return events[0] if events else None

    def blocking_trips(self) -> list[AlarmStatus]:
        """Trip alarms whose condition is still active: a clear must be refused while any is."""
        return [self._status(rt) for rt in self._alarms.values() if rt.latched and rt.condition]

    def clear_latches(self, user: str, now: float) -> list[AlarmEvent]:
        """Release every latched trip whose condition has returned (with the PackML clear)."""
        self._expire_shelves(now)
        events: list[AlarmEvent] = []
        for rt in self._alarms.values():
            if rt.latched and not rt.condition:
                rt.latched = False
                rt.first_out = False
                events += self._refresh(rt, now, "clear_latch", user=user)
        return events

    def tick(self, now: float) -> list[AlarmEvent]:
        """Let time pass: shelves expire. Call it periodically (e.g. every supervisor cycle)."""
        return self._expire_shelves(now)

    # -- views ---------------------------------------------------------------------------------
    def active(self) -> list[AlarmStatus]:
        """The alarm summary: annunciated alarms, most urgent first, then oldest first."""
        shown = [self._status(rt) for rt in self._alarms.values() if rt.state in ANNUNCIATED]
        return sorted(shown, key=lambda s: (PRIORITY_RANK[s.definition.priority], s.since or 0))

    def status(self, alarm_id: str) -> AlarmStatus:
        return self._status(self._runtime(alarm_id))

    def all_statuses(self) -> list[AlarmStatus]:
        return [self._status(rt) for rt in self._alarms.values()]

    def first_out(self) -> AlarmStatus | None:
        for rt in self._alarms.values():
            if rt.first_out:
                return self._status(rt)
        return None

    # -- internals -----------------------------------------------------------------------------
    def _runtime(self, alarm_id: str) -> _Runtime:
        try:
            return self._alarms[alarm_id]
        except KeyError:
            raise UnknownAlarm(alarm_id) from None

    def _runtime_by_tag(self, tag: str) -> _Runtime:
        try:
            return self._alarms[self._by_tag[tag]]
        except KeyError:
            raise UnknownAlarm(tag) from None

    def _suppressed_by_design(self, rt: _Runtime) -> bool:
        return self._machine_state is not None and (
            self._machine_state in rt.definition.suppressed_in
        )

    def _true_state(self, rt: _Runtime) -> AlarmState:
        if rt.out_of_service:
            return AlarmState.OUT_OF_SERVICE
        if self._suppressed_by_design(rt):
            return AlarmState.SUPPRESSED
        if rt.shelved_until is not None:
            return AlarmState.SHELVED
        if rt.condition or rt.latched:
            return AlarmState.ACK_ACTIVE if rt.acked else AlarmState.UNACK_ACTIVE
        return AlarmState.NORMAL if rt.acked else AlarmState.RTN_UNACK

    def _refresh(
        self,
        rt: _Runtime,
        now: float,
        action: str,
        user: str | None = None,
        note: str | None = None,
    ) -> list[AlarmEvent]:
        """Recompute the visible state; publish an event if it changed."""
        annunciating_before = rt.state in (AlarmState.UNACK_ACTIVE, AlarmState.ACK_ACTIVE)
        new = self._true_state(rt)
        if new in (AlarmState.UNACK_ACTIVE, AlarmState.ACK_ACTIVE) and not annunciating_before:
            # A new annunciation: someone has to acknowledge it.
            rt.acked = False
            rt.acked_by = None
            new = AlarmState.UNACK_ACTIVE
            if rt.definition.latching and rt.condition and not rt.latched:
                # First out: the first trip of a burst, while no other trip is latched.
                rt.first_out = not any(o.latched for o in self._alarms.values())
                rt.latched = True
        if new is rt.state:
            return []
        event = AlarmEvent(
            alarm_id=rt.definition.id,
            tag=rt.definition.tag,
            from_state=rt.state,
            to_state=new,
            priority=rt.definition.priority,
            category=rt.definition.category,
            message=rt.definition.message,
            time=now,
            action=action,
            user=user,
            value=rt.value,
            first_out=rt.first_out,
            note=note,
        )
        rt.state = new
        rt.since = now
        self._publish(event)
        return [event]

    def _expire_shelves(self, now: float) -> list[AlarmEvent]:
        events: list[AlarmEvent] = []
        if not self._shelved:
            return events  # every evaluation starts here, a dozen a safety cycle: keep it cheap
        for rt in self._alarms.values():
            if rt.shelved_until is not None and now >= rt.shelved_until:
                rt.shelved_until = None
                self._shelved.discard(rt.definition.id)
                events += self._refresh(rt, now, "shelve_expired")
        return events

    def _status(self, rt: _Runtime) -> AlarmStatus:
        return AlarmStatus(
            definition=rt.definition,
            state=rt.state,
            condition=rt.condition,
            latched=rt.latched,
            first_out=rt.first_out,
            value=rt.value,
            since=rt.since,
            acked_by=rt.acked_by,
            shelved_until=rt.shelved_until,
        )

    def _publish(self, event: AlarmEvent) -> None:
        log.info(
            "alarm",
            alarm_id=event.alarm_id,
            from_state=event.from_state.value,
            to_state=event.to_state.value,
            action=event.action,
            user=event.user,
            first_out=event.first_out,
        )
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                # One faulty subscriber must not keep the event from the records.
                log.exception("alarm_listener_failed", listener=repr(listener))
