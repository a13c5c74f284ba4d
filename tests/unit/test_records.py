"""Run records in SQLite: durability across a reopen, ordering, telemetry batching, interrupted
runs, checkpoints, the failure path (rule 9) and many concurrent writers."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from controller.records.run_records import (
    Outcome,
    PassRecord,
    RecordsError,
    RecordsReader,
    RecordsUnavailable,
    RunHeader,
    RunRecords,
    records_path,
    resolve_data_dir,
)
from controller.safety.alarms import AlarmEvent, AlarmState, Category, Priority


class Clock:
    """A deterministic wall clock: each reading is 1 s after the previous."""

    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def header(serial: str = "PF-001") -> RunHeader:
    return RunHeader(
        recipe_name="demo",
        recipe_text="name: demo\nlayers: []\n",
        line="line-sim",
        machine="lathe-1",
        operator="alice",
        preform_serial=serial,
        bait_rod_lot="BR-7",
        precursor_lot="SC-3",
    )


ALARM = AlarmEvent(
    alarm_id="TRIP-WATER",
    tag="safety.water_flow_low",
    from_state=AlarmState.NORMAL,
    to_state=AlarmState.UNACK_ACTIVE,
    priority=Priority.CRITICAL,
    category=Category.TRIP,
    message="Cooling water low",
    time=12.5,
    action="activate",
    value=14.2,
    first_out=True,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "records.sqlite3"


async def test_everything_survives_close_and_reopen(db: Path) -> None:
    async with RunRecords(db, line="line-sim", clock=Clock()) as rec:
        run_id = await rec.start_run(header())
        await rec.record_command(run_id, "alice", "start", {"recipe": "demo"}, accepted=True)
        await rec.record_state(run_id, "Idle", "Starting", "operator start")
        await rec.record_setpoint(run_id, "mfc_o2", "flow_slpm", 80.0, "recipe")
        await rec.record_alarm(run_id, ALARM)
        await rec.record_pass(run_id, PassRecord(1, 0, 30.2, 1.5, 240.0, 100.0, 340.0))
        await rec.checkpoint(run_id, 1, 0, {"diameter_mm": 30.2, "next": {"pass": 1}})
        await rec.record_command(
            run_id, "bob", "unhold", {}, accepted=False, reason="unhold is not allowed in Execute"
        )
        await rec.end_run(run_id, Outcome.COMPLETE)

    reader = RecordsReader(db)
    (summary,) = reader.list_runs()
    assert summary.id == run_id
    assert (summary.preform_serial, summary.bait_rod_lot, summary.precursor_lot) == (
        "PF-001",
        "BR-7",
        "SC-3",
    )
    assert summary.recipe_hash == header().recipe_hash
    assert summary.outcome is Outcome.COMPLETE
    assert summary.ended_at is not None
    assert summary.ended_at > summary.started_at
    detail = reader.get_run(run_id)
    assert detail is not None
    assert detail.recipe_text == header().recipe_text
    assert [(c.user, c.command, c.accepted, c.reason) for c in detail.commands] == [
        ("alice", "start", True, None),
        ("bob", "unhold", False, "unhold is not allowed in Execute"),
    ]
    assert detail.commands[0].args == {"recipe": "demo"}
    assert [(s.from_state, s.to_state, s.reason) for s in detail.states] == [
        ("Idle", "Starting", "operator start")
    ]
    assert [(s.device, s.quantity, s.value, s.source) for s in detail.setpoints] == [
        ("mfc_o2", "flow_slpm", 80.0, "recipe")
    ]
    (alarm,) = detail.alarms
    assert (alarm.alarm_id, alarm.to_state, alarm.first_out, alarm.value, alarm.alarm_time) == (
        "TRIP-WATER",
        "unack_active",
        True,
        14.2,
        12.5,
    )
    assert detail.passes == [PassRecord(1, 0, 30.2, 1.5, 240.0, 100.0, 340.0)]
    assert detail.last_checkpoint is not None
    assert detail.last_checkpoint.state == {"diameter_mm": 30.2, "next": {"pass": 1}}
    assert reader.get_run(run_id + 1) is None
    assert reader.interrupted_runs() == []


async def test_events_are_numbered_in_order(db: Path) -> None:
    async with RunRecords(db, line="line-sim", clock=Clock()) as rec:
        run_id = await rec.start_run(header())
        for i in range(5):
            await rec.record_state(run_id, f"S{i}", f"S{i + 1}")
        await rec.record_event(run_id, "recovery", {"decision": "resume"})
        await rec.end_run(run_id, "stopped")
    reader = RecordsReader(db)
    events = reader.events_since(0)
    assert [e.seq for e in events] == list(range(1, 9))
    assert [e.kind for e in events] == ["run_started", *["state"] * 5, "recovery", "run_ended"]
    assert [e.payload["to"] for e in events[1:6]] == ["S1", "S2", "S3", "S4", "S5"]
    assert [e.t for e in events] == sorted(e.t for e in events)
    assert [e.seq for e in reader.events_since(6, line="line-sim")] == [7, 8]
    assert reader.events_since(0, line="other-line") == []
    assert events[-1].payload == {"run_id": run_id, "outcome": "stopped"}
    # Another session continues the numbering.
    async with RunRecords(db, line="line-sim") as rec:
        await rec.record_state(None, "Idle", "Idle", "restart")
    assert [e.seq for e in reader.events_since(8)] == [9]


async def test_telemetry_is_batched(db: Path) -> None:
    async with RunRecords(db, telemetry_batch=10, telemetry_flush_s=3600) as rec:
        run_id = await rec.start_run(header())
        for i in range(25):
            rec.add_telemetry(run_id, {"rf_kw": 50.0 + i}, t=float(i))
        assert rec.stats.telemetry_batches == 2
        assert rec.telemetry_pending == 5
        await rec.flush()
        assert rec.telemetry_pending == 0
        # Readable while the writer is open (WAL).
        rows = RecordsReader(db).telemetry(run_id)
    assert [t for t, _ in rows] == [float(i) for i in range(25)]
    assert rows[24][1] == {"rf_kw": 74.0}


async def test_telemetry_never_waits_for_a_slow_writer(db: Path) -> None:
    gate = threading.Event()

    class SlowConnection(sqlite3.Connection):
        def executemany(self, sql: str, params: Any, /) -> sqlite3.Cursor:
            gate.wait(timeout=30)  # the disk is slow
            return super().executemany(sql, params)

    def connect(path: Path) -> sqlite3.Connection:
        return sqlite3.connect(path, isolation_level=None, factory=SlowConnection)

    async with RunRecords(
        db, connect=connect, telemetry_batch=2, telemetry_max_pending=4, telemetry_flush_s=3600
    ) as rec:
        for i in range(10):
            rec.add_telemetry(None, {"i": i}, t=float(i))  # returns at once every time
        assert rec.stats.telemetry_dropped == 6
        gate.set()
        await rec.flush()
    assert [s["i"] for _, s in RecordsReader(db).telemetry(None)] == [0, 1, 2, 3]


async def test_interrupted_runs_are_found_after_a_crash(db: Path) -> None:
    async with RunRecords(db) as rec:
        done = await rec.start_run(header("PF-1"))
        await rec.end_run(done, Outcome.ABORTED)
        crashed = await rec.start_run(header("PF-2"))
        await rec.checkpoint(crashed, 3, 41, {"diameter_mm": 38.5})
        # The controller dies here: the run is never ended.
    reader = RecordsReader(db)
    assert [r.id for r in reader.interrupted_runs()] == [crashed]
    checkpoint = reader.last_checkpoint(crashed)
    assert checkpoint is not None
    assert (checkpoint.layer, checkpoint.pass_index) == (3, 41)
    async with RunRecords(db) as rec:
        await rec.end_run(crashed, Outcome.INTERRUPTED)
    assert reader.interrupted_runs() == []
    assert reader.list_runs()[1].outcome is Outcome.INTERRUPTED


async def test_checkpoint_roundtrip_keeps_the_latest(db: Path) -> None:
    state: dict[str, Any] = {
        "diameter_mm": 41.27,
        "deposited_g": [1.5, 1.49, 1.51],
        "setpoints": {"rf_kw": 50.0, "sicl4_g_min": 20.0},
        "flame_outs": 0,
        "note": None,
    }
    async with RunRecords(db) as rec:
        run_id = await rec.start_run(header())
        await rec.checkpoint(run_id, 1, 9, {"old": True})
        await rec.checkpoint(run_id, 2, 10, state)
        assert RecordsReader(db).last_checkpoint(run_id) is not None
    checkpoint = RecordsReader(db).last_checkpoint(run_id)
    assert checkpoint is not None
    assert (checkpoint.run_id, checkpoint.layer, checkpoint.pass_index) == (run_id, 2, 10)
    assert checkpoint.state == state
    assert RecordsReader(db).last_checkpoint(run_id + 1) is None


async def test_many_coroutines_write_concurrently(db: Path) -> None:
    async with RunRecords(db, line="L1") as rec:
        run_id = await rec.start_run(header())

        async def operator(n: int) -> None:
            for k in range(10):
                await rec.record_command(run_id, f"user{n}", "note", {"k": k}, accepted=True)

        await asyncio.gather(*(operator(n) for n in range(50)))
    detail = RecordsReader(db).get_run(run_id)
    assert detail is not None
    assert len(detail.commands) == 500
    for n in range(50):
        mine = [c.args["k"] for c in detail.commands if c.user == f"user{n}"]
        assert mine == list(range(10))
    seqs = [e.seq for e in RecordsReader(db).events_since(0, limit=10_000)]
    assert seqs == list(range(1, 502))


async def test_cannot_open_raises_records_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(RecordsUnavailable, match="cannot open"):
        async with RunRecords(blocker / "records.sqlite3"):
            pass
    with pytest.raises(RecordsUnavailable):
        RecordsReader(tmp_path / "missing.sqlite3").list_runs()


async def test_a_failing_disk_fails_the_caller_and_calls_on_failure(db: Path) -> None:
    failing = threading.Event()

    class FlakyConnection(sqlite3.Connection):
        def execute(self, sql: str, params: Any = (), /) -> sqlite3.Cursor:
            if failing.is_set() and sql.startswith(("INSERT", "UPDATE", "COMMIT")):
                raise sqlite3.OperationalError("disk I/O error")
            return super().execute(sql, params)

    def connect(path: Path) -> sqlite3.Connection:
        return sqlite3.connect(path, isolation_level=None, factory=FlakyConnection)

    failures: list[tuple[RecordsUnavailable, int]] = []
    async with RunRecords(
        db, connect=connect, on_failure=lambda e: failures.append((e, threading.get_ident()))
    ) as rec:
        run_id = await rec.start_run(header())
        failing.set()
        with pytest.raises(RecordsUnavailable, match="disk I/O error"):
            await rec.record_command(run_id, "alice", "hold", accepted=True)
        # on_failure ran on the event loop's thread, before the caller resumed.
        assert len(failures) == 1
        assert failures[0][1] == threading.get_ident()
        assert rec.stats.failures == 1
        # The disk recovers: records work again.
        failing.clear()
        await rec.record_command(run_id, "alice", "hold", accepted=True)
    detail = RecordsReader(db).get_run(run_id)
    assert detail is not None
    assert len(detail.commands) == 1


async def test_a_full_disk_fails_the_caller(db: Path) -> None:
    def connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None)
        # A small database limit is a real SQLITE_FULL without filling the test machine's disk.
        conn.execute("PRAGMA max_page_count = 40")
        return conn

    failures: list[RecordsUnavailable] = []
    async with RunRecords(db, connect=connect, on_failure=failures.append) as rec:
        run_id = await rec.start_run(header())
        with pytest.raises(RecordsUnavailable, match="full"):  # noqa: PT012 - fills until it fails
            for _ in range(100):
                await rec.record_command(
                    run_id, "alice", "note", {"x": "y" * 20_000}, accepted=True
                )
        assert failures
        assert "full" in failures[0].detail


async def test_a_bad_request_fails_only_itself(db: Path) -> None:
    failures: list[RecordsUnavailable] = []
    async with RunRecords(db, on_failure=failures.append) as rec:
        run_id = await rec.start_run(header())
        results = await asyncio.gather(
            rec.record_pass(run_id + 99, PassRecord(1, 0, None, None, None, None, None)),
            rec.record_state(run_id, "Idle", "Starting"),
            rec.end_run(run_id + 99, "complete"),
            return_exceptions=True,
        )
    assert isinstance(results[0], RecordsError)
    assert not isinstance(results[0], RecordsUnavailable)
    assert results[1] is None
    assert isinstance(results[2], RecordsError)
    assert failures == []
    detail = RecordsReader(db).get_run(run_id)
    assert detail is not None
    assert len(detail.states) == 1
    assert detail.passes == []


async def test_lifecycle_misuse(db: Path) -> None:
    rec = RunRecords(db)
    with pytest.raises(RecordsError, match="not open"):
        await rec.record_state(None, "Idle", "Idle")
    async with rec:
        with pytest.raises(RecordsError, match="re-entrant"):
            async with rec:
                pass
    with pytest.raises(RecordsError, match="closed"):
        await rec.record_state(None, "Idle", "Idle")


def test_resolve_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("POVD_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(str(tmp_path / "cli")) == tmp_path / "cli"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("POVD_DATA_DIR")
    assert resolve_data_dir(None).name == "povd"
    assert resolve_data_dir("~/x") == Path.home() / "x"
    assert records_path(tmp_path) == tmp_path / "records.sqlite3"


async def test_last_seq_is_the_newest_event_of_the_line(tmp_path: Path) -> None:
    db = tmp_path / "records.sqlite3"
    async with RunRecords(db, line="L1") as records:
        assert RecordsReader(db).last_seq("L1") == 0
        for kind in ("a", "b", "c"):
            await records.record_event(None, kind, {})
    reader = RecordsReader(db)
    events = reader.events_since(0, line="L1")
    assert reader.last_seq("L1") == events[-1].seq
    assert reader.last_seq("other") == 0
