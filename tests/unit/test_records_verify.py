"""`povd runs verify` (controller/records/verify.py): a whole run passes; each kind of damage a
crash, a bug or an editor could leave is found, and named with its run."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli.records_commands import legal_transitions
from controller.records.audit import AuditTrail
from controller.records.run_records import PassRecord, RunHeader, RunRecords
from controller.records.verify import Verification, verify_records

HEADER = RunHeader(recipe_name="demo", recipe_text="name: demo\n", line="line-1",
                   machine="lathe-1", operator="alice")
# A run as the supervisor records it: start, three passes, a hold and unhold, completion.
STATES = [("Idle", "Starting"), ("Starting", "Execute"), ("Execute", "Holding"),
          ("Holding", "Held"), ("Held", "Unholding"), ("Unholding", "Execute"),
          ("Execute", "Completing"), ("Completing", "Complete")]


def _pass(index: int, layer: int = 0) -> PassRecord:
    return PassRecord(layer=layer, pass_index=index, diameter_mm=30.0 + index,
                      deposited_g=1.0, duration_s=12.0, started_at=None, ended_at=None)


async def _write_good_run(db: Path) -> int:
    async with RunRecords(db, line="line-1") as rec:
        run_id = await rec.start_run(HEADER)
        await rec.record_command(run_id, "alice", "start", {"recipe": "demo"}, accepted=True)
        for before, after in STATES[:2]:
            await rec.record_state(run_id, before, after)
        for index in (1, 2):
            await rec.record_pass(run_id, _pass(index))
            await rec.checkpoint(run_id, 0, index, {"passes_done": index})
        for before, after in STATES[2:6]:
            await rec.record_state(run_id, before, after)
        await rec.record_pass(run_id, _pass(3, layer=1))
        for before, after in STATES[6:]:
            await rec.record_state(run_id, before, after)
        await rec.end_run(run_id, "complete")
    return run_id


def _verify(db: Path, audit: Path | None = None) -> Verification:
    return verify_records(db, legal_transitions(), audit=audit)


def _details(result: Verification, check: str) -> list[str]:
    return [f.detail for f in result.all_findings if f.check == check]


@pytest.fixture
async def good(tmp_path: Path) -> Path:
    db = tmp_path / "records.sqlite3"
    await _write_good_run(db)
    return db


def _sql(db: Path, *statements: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


async def test_a_whole_run_passes(good: Path) -> None:
    result = _verify(good)
    assert result.ok, result.all_findings
    (run,) = result.runs
    assert (run.outcome, run.passes, run.states, run.resumes) == ("complete", 3, 8, 0)
    assert result.events == 1 + 1 + 8 + 3 + 1  # started, command, states, passes, ended


async def test_a_resumed_run_passes_when_it_restarts_from_idle_at_its_last_pass(
        tmp_path: Path) -> None:
    db = tmp_path / "records.sqlite3"
    async with RunRecords(db, line="line-1") as rec:
        run_id = await rec.start_run(HEADER)
        await rec.record_state(run_id, "Idle", "Starting")
        await rec.record_state(run_id, "Starting", "Execute")
        await rec.record_pass(run_id, _pass(1))
        # kill -9 here; the next controller resumes from the checkpoint of pass 1
        await rec.record_event(run_id, "run_resumed", {"cursor": {"passes_done": 1}})
        await rec.record_state(run_id, "Idle", "Starting")
        await rec.record_state(run_id, "Starting", "Execute")
        await rec.record_pass(run_id, _pass(2))
        await rec.record_state(run_id, "Execute", "Stopping")
        await rec.record_state(run_id, "Stopping", "Stopped")
        await rec.end_run(run_id, "stopped")
    result = _verify(db)
    assert result.ok, result.all_findings
    assert result.runs[0].resumes == 1


async def test_a_resume_behind_the_recorded_passes_is_found(tmp_path: Path) -> None:
    """A crash between a pass's record and its checkpoint: the resume would make it twice."""
    db = tmp_path / "records.sqlite3"
    async with RunRecords(db, line="line-1") as rec:
        run_id = await rec.start_run(HEADER)
        await rec.record_pass(run_id, _pass(1))
        await rec.record_pass(run_id, _pass(2))
        await rec.record_event(run_id, "run_resumed", {"cursor": {"passes_done": 1}})
    assert _details(_verify(db), "passes") == ["resumed from pass 1 with 2 passes recorded"]


async def test_a_missing_event_is_a_sequence_gap_and_a_row_without_its_event(good: Path) -> None:
    _sql(good, "DELETE FROM events WHERE seq IN (5, 6)")
    result = _verify(good)
    assert _details(result, "sequence") == ["line line-1: events 5..6 are missing"]
    assert _details(result, "rows") == ["3 passes rows but 1 'pass' events"]
    assert result.all_findings[0].run_id is None  # the line's finding, not a run's


async def test_a_repeated_sequence_number_is_found(good: Path) -> None:
    # The real table's primary key forbids a repeat; a copy without it (an export, a repair)
    # must still be checked.
    _sql(good, "ALTER TABLE events RENAME TO events_pk",
         "CREATE TABLE events AS SELECT * FROM events_pk", "DROP TABLE events_pk",
         "INSERT INTO events SELECT * FROM events WHERE seq = 3")
    assert _details(_verify(good), "sequence") == ["line line-1: event 3 appears twice"]


async def test_a_lost_pass_row_is_found(good: Path) -> None:
    _sql(good, "DELETE FROM passes WHERE pass_index = 2")
    result = _verify(good)
    assert "pass 3 follows pass 1: 1 missing" in _details(result, "passes")
    assert "2 passes rows but 3 'pass' events" in _details(result, "rows")


async def test_a_pass_made_twice_is_found(good: Path) -> None:
    _sql(good, "INSERT INTO passes (run_id, layer, pass_index) VALUES (1, 1, 3)",
         "INSERT INTO events VALUES ('line-1', 15, 0, 1, 'pass', '{\"pass_index\": 3}')")
    result = _verify(good)
    assert "pass 3 recorded again" in _details(result, "passes")
    assert "pass 3 recorded after the run's end" in _details(result, "passes")


async def test_a_pass_in_an_earlier_layer_is_found(good: Path) -> None:
    _sql(good, "UPDATE passes SET layer = 2 WHERE pass_index = 2")
    assert _details(_verify(good), "passes") == ["pass 3 is in layer 1, after layer 2"]


async def test_an_illegal_transition_is_found(good: Path) -> None:
    """Held straight to Execute skips Unholding: not in the table."""
    _sql(good, "DELETE FROM events WHERE kind = 'state' AND payload LIKE '%Unholding%'",
         "DELETE FROM state_changes WHERE to_state = 'Unholding' OR from_state = 'Unholding'",
         "UPDATE events SET seq = seq + 100 WHERE seq > 9",  # (the gap is another finding)
         "INSERT INTO events VALUES ('line-1', 9, 0, 1, 'state', "
         "'{\"from\": \"Held\", \"to\": \"Execute\"}')",
         "INSERT INTO state_changes (run_id, t, from_state, to_state) "
         "VALUES (1, 0, 'Held', 'Execute')")
    states = _details(_verify(good), "states")
    assert states == ["event 9: Held -> Execute is not a transition of the state machine"]


async def test_a_lost_state_change_breaks_the_chain_of_states(good: Path) -> None:
    _sql(good, "DELETE FROM events WHERE kind = 'state' AND payload LIKE '%\"to\":\"Held\"%'")
    result = _verify(good)
    assert any("Held -> Unholding follows a change to Holding" in d
               for d in _details(result, "states"))
    assert _details(result, "sequence")  # and the hole in the numbering


async def test_a_run_that_does_not_start_from_idle_is_found(good: Path) -> None:
    _sql(good, "UPDATE events SET payload = '{\"from\":\"Stopped\",\"to\":\"Starting\"}' "
         "WHERE seq = 3")
    assert "event 3: Stopped -> Starting follows a change to Idle" in _details(
        _verify(good), "states")


async def test_an_outcome_without_its_end_event_is_found(good: Path) -> None:
    _sql(good, "UPDATE runs SET outcome = 'aborted'")
    assert _details(_verify(good), "rows") == [
        "outcome aborted but the run_ended event says complete"]


async def test_a_broken_audit_chain_is_found(good: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.sqlite3"
    with AuditTrail(audit) as trail:
        for action in ("login", "start", "hold"):
            trail.append("alice", action, {})
    assert _verify(good, audit).ok
    assert _verify(good, audit).audit_entries == 3
    _sql(audit, "DROP TRIGGER audit_no_update",
         "UPDATE audit SET action = 'unhold' WHERE seq = 3")
    assert _details(_verify(good, audit), "audit") == [
        f"{audit}: broken at entry 3: hash does not match the entry's content: altered"]


async def test_the_cli_exits_1_with_the_findings_and_0_when_whole(good: Path) -> None:
    def verify(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controller.cli.main", "--data-dir", str(good.parent),
             "runs", "verify", *extra], capture_output=True, text=True, timeout=60, check=False)

    whole = verify("--run", "1")
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert "verified: every check passed" in whole.stdout
    _sql(good, "DELETE FROM passes WHERE pass_index = 1")
    broken = verify("--json")
    assert broken.returncode == 1
    report = json.loads(broken.stdout)
    assert report["ok"] is False
    assert report["runs"][0]["findings"][0]["check"] in {"rows", "passes"}
    assert verify("--run", "7").returncode == 2  # no such run
