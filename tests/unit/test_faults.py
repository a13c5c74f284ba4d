"""The fault board: inject, clear, expiry on an injected wall clock, and refusals."""

from __future__ import annotations

import pytest

from simulators.faults import (
    ALL_FAULTS,
    LINK_FAULTS,
    PROCESS_FAULTS,
    VALUE_FAULTS,
    FaultBoard,
)


class FakeWall:
    """A wall clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def wall() -> FakeWall:
    return FakeWall()


@pytest.fixture
def board(wall: FakeWall) -> FaultBoard:
    return FaultBoard(wall)


def test_inject_until_cleared(board: FaultBoard, wall: FakeWall) -> None:
    fault = board.inject("rf", "silent")
    assert (fault.device, fault.kind, fault.params) == ("rf", "silent", {})
    assert fault.started_at == wall.now
    assert fault.expires_at is None
    wall.now += 1e6
    assert board.active("rf", "silent") is fault
    assert board.is_active("rf", "silent")
    assert not board.is_active("rf", "corrupt")
    assert not board.is_active("safety_io", "silent")


def test_fault_with_duration_expires_on_the_wall_clock(board: FaultBoard, wall: FakeWall) -> None:
    board.inject("mfc_ar", "stuck", duration_s=2.0)
    wall.now += 1.999
    assert board.is_active("mfc_ar", "stuck")
    assert board.snapshot() == [{"device": "mfc_ar", "kind": "stuck", "params": {},
                                 "remaining_s": pytest.approx(0.001)}]
    wall.now += 0.001
    assert not board.is_active("mfc_ar", "stuck")
    assert board.snapshot() == []


def test_snapshot_drops_expired_faults(board: FaultBoard, wall: FakeWall) -> None:
    board.inject("rf", "silent", duration_s=1.0)
    board.inject("rf", "drift", params={"offset": 2.5})
    wall.now += 5.0
    assert board.snapshot() == [
        {"device": "rf", "kind": "drift", "params": {"offset": 2.5}, "remaining_s": None}
    ]


def test_reinjecting_replaces_the_fault(board: FaultBoard, wall: FakeWall) -> None:
    board.inject("rf", "drift", duration_s=1.0, params={"offset": 1.0})
    board.inject("rf", "drift", params={"offset": 3.0})
    wall.now += 10.0
    active = board.active("rf", "drift")
    assert active is not None
    assert active.params == {"offset": 3.0}
    assert len(board.snapshot()) == 1


def test_params_are_copied(board: FaultBoard) -> None:
    params = {"offset": 1.0}
    fault = board.inject("rf", "drift", params=params)
    params["offset"] = 99.0
    assert fault.params == {"offset": 1.0}


def test_clear_one_a_device_or_all(board: FaultBoard) -> None:
    board.inject("rf", "silent")
    board.inject("rf", "drift")
    board.inject("carriage", "drive_alarm")
    board.inject("safety_io", "estop")
    assert board.clear("rf", "silent") == 1
    assert board.clear("rf", "silent") == 0
    assert board.is_active("rf", "drift")
    assert board.clear("rf") == 1
    assert board.clear(kind="estop") == 1
    assert board.is_active("carriage", "drive_alarm")
    assert board.clear() == 1
    assert board.snapshot() == []


def test_link_fault_priority(board: FaultBoard) -> None:
    assert board.link_fault("rf") is None
    board.inject("rf", "corrupt")
    assert board.link_fault("rf") == "corrupt"
    board.inject("rf", "silent")
    assert board.link_fault("rf") == "silent"
    board.inject("rf", "disconnect")
    assert board.link_fault("rf") == "disconnect"  # the strongest fault wins
    board.inject("rf", "stuck")
    assert board.link_fault("rf") == "disconnect"  # value faults are not link faults


@pytest.mark.parametrize("kind", ["meltdown", "", "SILENT", "flame out"])
def test_unknown_kinds_are_refused(board: FaultBoard, kind: str) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        board.inject("rf", kind)
    assert board.snapshot() == []


@pytest.mark.parametrize("duration_s", [0.0, -1.0])
def test_non_positive_durations_are_refused(board: FaultBoard, duration_s: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        board.inject("rf", "silent", duration_s=duration_s)
    assert board.snapshot() == []


def test_the_issue_fault_kinds_exist() -> None:
    assert {"silent", "disconnect", "corrupt", "torn"} == LINK_FAULTS
    assert {"stuck", "drift"} == VALUE_FAULTS
    issue_process_faults = {
        "flame_out", "water_flow_low", "door_open", "estop", "gas_alarm", "exhaust_lost",
        "scrubber_not_ready", "drive_alarm", "rf_fault", "safety_relay_open",
        "o2_enrichment",
    }
    assert issue_process_faults <= PROCESS_FAULTS
    assert ALL_FAULTS == LINK_FAULTS | VALUE_FAULTS | PROCESS_FAULTS


def test_default_wall_clock_is_monotonic() -> None:
    board = FaultBoard()
    fault = board.inject("rf", "silent", duration_s=3600)
    assert fault.expires_at is not None
    assert fault.expires_at - fault.started_at == pytest.approx(3600)
    assert board.is_active("rf", "silent")


def test_o2_enrichment_is_injectable_like_gas_alarm(board: FaultBoard) -> None:
    fault = board.inject("safety_io", "o2_enrichment", params={"value": 24.0})
    assert board.is_active("safety_io", "o2_enrichment")
    assert fault.params == {"value": 24.0}
