"""The loop-lag watchdog's arithmetic: late by more than a period, held a while; starved past
max_safety_gap_s."""

from __future__ import annotations

from controller.safety.cycle_watchdog import LATE_HOLD_S, SafetyCycleWatchdog


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_on_time_wakeups_are_neither_late_nor_starved() -> None:
    clock = Clock()
    dog = SafetyCycleWatchdog(0.01, 0.25, clock)
    for _ in range(100):
        clock.t += 0.0125  # a little late, less than a period
        health = dog.cycle()
        assert not health.late
        assert not health.starved
    assert dog.late_cycles == 0


def test_a_wakeup_late_by_more_than_a_period_is_late_for_a_while() -> None:
    clock = Clock()
    dog = SafetyCycleWatchdog(0.01, 0.25, clock)
    dog.cycle()
    clock.t += 0.021
    health = dog.cycle()
    assert health.late
    assert not health.starved
    clock.t += 0.01
    assert dog.cycle().late, "the alarm holds after the late cycle"
    for _ in range(int(LATE_HOLD_S / 0.01) + 1):  # on time again, for the hold's length
        clock.t += 0.01
        health = dog.cycle()
    assert not health.late
    assert dog.late_cycles == 1
    assert abs(dog.worst_gap_s - 0.021) < 1e-9


def test_a_gap_past_the_maximum_is_starved_once() -> None:
    clock = Clock()
    dog = SafetyCycleWatchdog(0.01, 0.25, clock)
    dog.cycle()
    clock.t += 0.3
    health = dog.cycle()
    assert health.starved
    assert health.late
    clock.t += 0.01
    assert not dog.cycle().starved
