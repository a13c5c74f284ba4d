"""ISA-18.2 alarm states, shelving, suppression, first-out latching and deviation monitoring,
all with explicit time."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from controller.config.line import SupervisionConfig
from controller.safety.alarms import (
    AlarmDefinition,
    AlarmEvent,
    AlarmManager,
    AlarmRefused,
    AlarmState,
    Category,
    DeviationMonitor,
    DeviationSpec,
    Priority,
    UnknownAlarm,
)

A = AlarmState

ESTOP = AlarmDefinition(
    "TRIP-ESTOP", "safety.estop", "E-stop pressed", Priority.CRITICAL, Category.TRIP
)
WATER = AlarmDefinition(
    "TRIP-WATER", "safety.water_flow_low", "Cooling water low", Priority.CRITICAL, Category.TRIP
)
GAUGE = AlarmDefinition(
    "DEV-GAUGE", "diameter_gauge.link", "Diameter gauge lost", Priority.MEDIUM, Category.DEVICE
)
O2_FLOW = AlarmDefinition(
    "DEV-O2",
    "mfc_o2.flow",
    "O2 flow off its setpoint",
    Priority.HIGH,
    Category.DEVIATION,
    # 5 % of a 200 slpm full scale for 5 s, returning inside 4 %.
    deviation=DeviationSpec.percent_of_full_scale(5, 200, delay_s=5, hysteresis_percent=1),
    suppressed_in=frozenset({"Idle", "Stopped", "Aborted"}),
)


@pytest.fixture
def manager() -> tuple[AlarmManager, list[AlarmEvent]]:
    mgr = AlarmManager([ESTOP, WATER, GAUGE, O2_FLOW])
    events: list[AlarmEvent] = []
    mgr.subscribe(events.append)
    return mgr, events


def transitions(events: list[AlarmEvent]) -> list[tuple[str, AlarmState, AlarmState]]:
    return [(e.alarm_id, e.from_state, e.to_state) for e in events]


def test_isa_18_2_cycle_ack_while_active(manager: tuple[AlarmManager, list[AlarmEvent]]) -> None:
    mgr, events = manager
    mgr.evaluate("diameter_gauge.link", True, now=1.0)
    assert mgr.status("DEV-GAUGE").state is A.UNACK_ACTIVE
    ack = mgr.acknowledge("DEV-GAUGE", "alice", now=2.0)
    assert ack is not None
    assert (ack.user, ack.action, ack.to_state) == ("alice", "acknowledge", A.ACK_ACTIVE)
    assert mgr.status("DEV-GAUGE").acked_by == "alice"
    mgr.evaluate("diameter_gauge.link", False, now=3.0)
    assert transitions(events) == [
        ("DEV-GAUGE", A.NORMAL, A.UNACK_ACTIVE),
        ("DEV-GAUGE", A.UNACK_ACTIVE, A.ACK_ACTIVE),
        ("DEV-GAUGE", A.ACK_ACTIVE, A.NORMAL),
    ]
    assert [e.time for e in events] == [1.0, 2.0, 3.0]


def test_isa_18_2_cycle_return_before_ack(manager: tuple[AlarmManager, list[AlarmEvent]]) -> None:
    mgr, events = manager
    mgr.evaluate("diameter_gauge.link", True, now=1.0, value=0.0)
    mgr.evaluate("diameter_gauge.link", False, now=2.0)
    assert mgr.status("DEV-GAUGE").state is A.RTN_UNACK
    assert [s.definition.id for s in mgr.active()] == ["DEV-GAUGE"]  # still on the summary
    # Comes back before anyone acknowledged: annunciated again.
    mgr.evaluate("diameter_gauge.link", True, now=3.0)
    mgr.evaluate("diameter_gauge.link", False, now=4.0)
    mgr.acknowledge("DEV-GAUGE", "bob", now=5.0)
    assert transitions(events) == [
        ("DEV-GAUGE", A.NORMAL, A.UNACK_ACTIVE),
        ("DEV-GAUGE", A.UNACK_ACTIVE, A.RTN_UNACK),
        ("DEV-GAUGE", A.RTN_UNACK, A.UNACK_ACTIVE),
        ("DEV-GAUGE", A.UNACK_ACTIVE, A.RTN_UNACK),
        ("DEV-GAUGE", A.RTN_UNACK, A.NORMAL),
    ]
    assert events[0].value == 0.0
    assert mgr.active() == []


def test_repeated_inputs_and_acks_emit_nothing(
    manager: tuple[AlarmManager, list[AlarmEvent]],
) -> None:
    mgr, events = manager
    mgr.evaluate("diameter_gauge.link", False, now=1.0)
    assert events == []
    mgr.evaluate("diameter_gauge.link", True, now=2.0)
    mgr.evaluate("diameter_gauge.link", True, now=3.0)
    assert len(events) == 1
    assert mgr.acknowledge("DEV-GAUGE", "alice", now=4.0) is not None
    assert mgr.acknowledge("DEV-GAUGE", "bob", now=5.0) is None
    assert mgr.acknowledge("TRIP-ESTOP", "bob", now=5.0) is None
    assert len(events) == 2


def test_first_out_latching(manager: tuple[AlarmManager, list[AlarmEvent]]) -> None:
    mgr, events = manager
    mgr.evaluate("safety.water_flow_low", True, now=10.0)
    mgr.evaluate("safety.estop", True, now=10.01)
    assert events[0].first_out
    assert not events[1].first_out
    first = mgr.first_out()
    assert first is not None
    assert first.definition.id == "TRIP-WATER"
    # The water comes back: the trip stays latched and annunciated.
    mgr.evaluate("safety.water_flow_low", False, now=11.0)
    assert mgr.status("TRIP-WATER").state is A.UNACK_ACTIVE
    assert mgr.status("TRIP-WATER").latched
    # The E-stop is still pressed: it blocks a clear.
    assert [s.definition.id for s in mgr.blocking_trips()] == ["TRIP-ESTOP"]
    events.clear()
    cleared = mgr.clear_latches("alice", now=12.0)
    assert transitions(cleared) == [("TRIP-WATER", A.UNACK_ACTIVE, A.RTN_UNACK)]
    assert cleared[0].user == "alice"
    assert events == cleared
    assert mgr.first_out() is None
    mgr.evaluate("safety.estop", False, now=13.0)
    assert mgr.status("TRIP-ESTOP").state is A.UNACK_ACTIVE  # latched still
    mgr.acknowledge_all("alice", now=14.0)
    mgr.clear_latches("alice", now=15.0)
    assert mgr.status("TRIP-ESTOP").state is A.NORMAL
    assert mgr.status("TRIP-WATER").state is A.NORMAL
    assert mgr.blocking_trips() == []
    # A new burst has a new first out.
    mgr.evaluate("safety.estop", True, now=20.0)
    assert mgr.status("TRIP-ESTOP").first_out


def test_active_summary_is_sorted_by_priority_then_age(
    manager: tuple[AlarmManager, list[AlarmEvent]],
) -> None:
    mgr, _ = manager
    mgr.evaluate("diameter_gauge.link", True, now=1.0)
    mgr.evaluate("safety.estop", True, now=2.0)
    mgr.evaluate("safety.water_flow_low", True, now=3.0)
    assert [s.definition.id for s in mgr.active()] == ["TRIP-ESTOP", "TRIP-WATER", "DEV-GAUGE"]


def test_shelving_hides_and_expiry_restores_the_true_state(
    manager: tuple[AlarmManager, list[AlarmEvent]],
) -> None:
    mgr, events = manager
    mgr.evaluate("diameter_gauge.link", True, now=0.0)
    mgr.acknowledge("DEV-GAUGE", "alice", now=1.0)
    shelved = mgr.shelve("DEV-GAUGE", "alice", duration_s=60, now=2.0, reason="gauge cleaning")
    assert shelved is not None
    assert (shelved.to_state, shelved.note, shelved.user) == (A.SHELVED, "gauge cleaning", "alice")
    assert mgr.active() == []
    assert mgr.status("DEV-GAUGE").shelved_until == 62.0
    assert mgr.tick(61.9) == []
    expired = mgr.tick(62.0)
    # Still active when the shelf expires: annunciated again, to be acknowledged again.
    assert transitions(expired) == [("DEV-GAUGE", A.SHELVED, A.UNACK_ACTIVE)]
    assert expired[0].action == "shelve_expired"
    assert events[-1] == expired[0]


def test_a_shelved_alarm_that_returned_comes_back_normal(
    manager: tuple[AlarmManager, list[AlarmEvent]],
) -> None:
    mgr, _ = manager
    mgr.evaluate("diameter_gauge.link", True, now=0.0)
    mgr.shelve("DEV-GAUGE", "alice", duration_s=60, now=1.0, reason="known")
    mgr.evaluate("diameter_gauge.link", False, now=5.0)
    assert mgr.status("DEV-GAUGE").state is A.SHELVED
    event = mgr.unshelve("DEV-GAUGE", "bob", now=6.0)
    assert event is not None
    # It was never acknowledged before it was shelved.
    assert (event.to_state, event.user) == (A.RTN_UNACK, "bob")
    assert mgr.unshelve("DEV-GAUGE", "bob", now=7.0) is None


def test_shelving_rules(manager: tuple[AlarmManager, list[AlarmEvent]]) -> None:
    mgr, _ = manager
    with pytest.raises(AlarmRefused, match="trip alarms cannot be shelved"):
        mgr.shelve("TRIP-ESTOP", "alice", 60, now=0.0, reason="annoying")
    with pytest.raises(AlarmRefused, match="reason"):
        mgr.shelve("DEV-GAUGE", "alice", 60, now=0.0, reason=" ")
    with pytest.raises(AlarmRefused, match="positive duration"):
        mgr.shelve("DEV-GAUGE", "alice", 0, now=0.0, reason="x")
    with pytest.raises(UnknownAlarm):
        mgr.shelve("NOPE", "alice", 60, now=0.0, reason="x")
    with pytest.raises(UnknownAlarm):
        mgr.evaluate("no.such.tag", True, now=0.0)


def test_out_of_service(manager: tuple[AlarmManager, list[AlarmEvent]]) -> None:
    mgr, _ = manager
    oos = mgr.set_out_of_service("DEV-GAUGE", "tech", now=0.0, reason="gauge removed")
    assert oos is not None
    assert oos.to_state is A.OUT_OF_SERVICE
    mgr.evaluate("diameter_gauge.link", True, now=1.0)
    assert mgr.status("DEV-GAUGE").state is A.OUT_OF_SERVICE
    back = mgr.return_to_service("DEV-GAUGE", "tech", now=2.0)
    assert back is not None
    assert back.to_state is A.UNACK_ACTIVE
    with pytest.raises(AlarmRefused):
        mgr.set_out_of_service("TRIP-WATER", "tech", now=3.0, reason="x")


def test_state_based_suppression(manager: tuple[AlarmManager, list[AlarmEvent]]) -> None:
    mgr, events = manager
    # In Idle a flow far from its setpoint is not an alarm, however long it lasts.
    for t in range(20):
        mgr.evaluate_deviation("mfc_o2.flow", 0.0, 80.0, now=float(t), machine_state="Idle")
    assert mgr.status("DEV-O2").state is A.SUPPRESSED
    assert [e.to_state for e in events] == [A.SUPPRESSED]
    # In Execute the delay starts afresh: the first 5 s of a ramp are not an alarm.
    mgr.set_machine_state("Execute", now=20.0)
    assert mgr.status("DEV-O2").state is A.NORMAL
    mgr.evaluate_deviation("mfc_o2.flow", 0.0, 80.0, now=20.0)
    mgr.evaluate_deviation("mfc_o2.flow", 0.0, 80.0, now=24.9)
    assert mgr.status("DEV-O2").state is A.NORMAL
    raised = mgr.evaluate_deviation("mfc_o2.flow", 0.0, 80.0, now=25.0)
    assert transitions(raised) == [("DEV-O2", A.NORMAL, A.UNACK_ACTIVE)]
    assert raised[0].value == 0.0
    # Back to Stopped: suppressed again, out of the summary.
    mgr.evaluate_deviation("mfc_o2.flow", 0.0, 80.0, now=26.0, machine_state="Stopped")
    assert mgr.status("DEV-O2").state is A.SUPPRESSED
    assert mgr.active() == []


def test_deviation_needs_a_deviation_alarm(manager: tuple[AlarmManager, list[AlarmEvent]]) -> None:
    mgr, _ = manager
    with pytest.raises(AlarmRefused, match="not a deviation alarm"):
        mgr.evaluate_deviation("diameter_gauge.link", 1.0, 2.0, now=0.0)


def test_deviation_monitor_deadband_delay_hysteresis() -> None:
    spec = DeviationSpec.percent_of_full_scale(5, 200, delay_s=5, hysteresis_percent=1)
    assert (spec.deadband, spec.delay_s, spec.hysteresis) == (10.0, 5, 2.0)
    mon = DeviationMonitor(spec)
    assert not mon.update(90.0, 80.0, now=0.0)  # exactly on the deadband: inside
    assert not mon.update(91.0, 80.0, now=1.0)
    assert not mon.update(91.0, 80.0, now=5.9)
    assert not mon.update(85.0, 80.0, now=6.0)  # back inside: the delay restarts
    assert not mon.update(69.0, 80.0, now=7.0)
    assert not mon.update(69.0, 80.0, now=11.9)
    assert mon.update(69.0, 80.0, now=12.0)
    assert mon.update(72.0, 80.0, now=13.0)  # inside the deadband, not below the hysteresis
    assert mon.update(71.9, 80.0, now=14.0)
    assert not mon.update(72.1, 80.0, now=15.0)  # 7.9 < 10 - 2: returned
    assert not mon.active
    assert not mon.update(0.0, None, now=16.0)  # no setpoint: nothing to deviate from


def test_deviation_spec_validation() -> None:
    with pytest.raises(ValueError, match="deadband"):
        DeviationSpec(0.0)
    with pytest.raises(ValueError, match="hysteresis"):
        DeviationSpec(1.0, hysteresis=1.0)
    with pytest.raises(ValueError, match="delay_s"):
        DeviationSpec(1.0, delay_s=-1)
    with pytest.raises(ValueError, match="deviation spec"):
        AlarmDefinition("X", "x", "x", Priority.LOW, Category.DEVIATION)
    with pytest.raises(ValueError, match="duplicate"):
        AlarmManager([GAUGE, GAUGE])


def test_definitions_load_from_plain_data() -> None:
    raw = [
        {
            "id": "DEV-SICL4",
            "tag": "mfc_sicl4.flow",
            "message": "SiCl4 flow off its setpoint",
            "priority": "high",
            "category": "deviation",
            "deviation": {"deadband": 0.5, "delay_s": 5.0, "hysteresis": 0.1},
            "suppressed_in": ["Idle"],
        }
    ]
    (definition,) = TypeAdapter(list[AlarmDefinition]).validate_python(raw)
    assert definition.priority is Priority.HIGH
    assert definition.deviation == DeviationSpec(0.5, 5.0, 0.1)
    assert definition.suppressed_in == frozenset({"Idle"})


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    mgr = AlarmManager([GAUGE])
    seen: list[AlarmEvent] = []

    def broken(_: AlarmEvent) -> None:
        raise RuntimeError("boom")

    mgr.subscribe(broken)
    unsubscribe = mgr.subscribe(seen.append)
    mgr.evaluate("diameter_gauge.link", True, now=0.0)
    assert len(seen) == 1
    unsubscribe()
    mgr.evaluate("diameter_gauge.link", False, now=1.0)
    assert len(seen) == 1
    assert mgr.status("DEV-GAUGE").state is A.RTN_UNACK


def test_a_shelve_longer_than_the_maximum_is_refused() -> None:
    mgr = AlarmManager([GAUGE], max_shelve_s=3600)
    with pytest.raises(AlarmRefused, match=r"at most 3600 s \(1 h\), not 3601 s"):
        mgr.shelve(GAUGE.id, "olga", 3601, 0.0, "sensor cleaning")
    mgr.shelve(GAUGE.id, "olga", 3600, 0.0, "sensor cleaning")
    assert mgr.status(GAUGE.id).shelved_until == 3600.0


def test_the_line_configuration_is_the_default_maximum() -> None:
    assert AlarmManager([GAUGE]).max_shelve_s == SupervisionConfig().alarm_shelve_max_s == 8 * 3600
