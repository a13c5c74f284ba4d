"""`povd runs verify`: is a records file whole and does every run in it make sense?

Read-only checks over the run records (and the audit trail, when there is one), each a finding
with the run it concerns:

- the events' sequence numbers run 1, 2, 3... per line: a gap is a lost record, a repeat a
  record written twice;
- every state change, pass and command row has its numbered event and the other way round
  (both are written in one transaction: a difference means a lost or a stray row);
- pass continuity: a run's pass numbers go 1, 2, 3... (a resume restarts the interrupted pass,
  it neither skips one nor makes one twice), layers never go back, no pass is recorded after the
  run's end, a run ends once, and a resume starts from the last recorded pass;
- state transitions: each is one the state machine allows (the table is given by the caller:
  records sit beside the safety package, not above it), and each starts where the one before it
  ended; a run starts from Idle, and so does each resume (a new controller starts in Idle);
- the audit trail's hash chain (``AuditTrail.verify``).

Nothing here writes: the file may be in use by a running controller (WAL)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.records.audit import AuditError, AuditTrail
from controller.records.schema import RecordsUnavailable

# The state every run, and every resume of one, starts from: a new controller is in Idle.
INITIAL_STATE = "Idle"

# Which table's rows go with which kind of event (rows.insert_*: one transaction for both).
PAIRED_ROWS: dict[str, str] = {"state_changes": "state", "passes": "pass", "commands": "command"}

LegalTransitions = Collection[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Finding:
    check: str  # sequence, rows, passes, states, audit
    detail: str
    run_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "run_id": self.run_id, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class RunVerification:
    run_id: int
    outcome: str | None
    passes: int
    states: int
    resumes: int
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "outcome": self.outcome, "passes": self.passes,
                "states": self.states, "resumes": self.resumes, "ok": self.ok,
                "findings": [f.to_json() for f in self.findings]}


@dataclass(frozen=True, slots=True)
class Verification:
    runs: tuple[RunVerification, ...]
    events: int
    audit_entries: int | None  # None: no audit trail was checked
    findings: tuple[Finding, ...] = field(default=())  # the line's (sequence, audit)

    @property
    def all_findings(self) -> list[Finding]:
        return [*self.findings, *(f for r in self.runs for f in r.findings)]

    @property
    def ok(self) -> bool:
        return not self.all_findings

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "events": self.events, "audit_entries": self.audit_entries,
                "findings": [f.to_json() for f in self.findings],
                "runs": [r.to_json() for r in self.runs]}


@dataclass(frozen=True, slots=True)
class _Event:
    seq: int
    run_id: int | None
    kind: str
    payload: dict[str, Any]


def verify_records(db: Path, legal: LegalTransitions, *, run_id: int | None = None,
                   audit: Path | None = None) -> Verification:
    """Every run (or only ``run_id``) of the records at ``db``, the sequence numbers of the
    lines they ran on, and the audit trail at ``audit`` if given and present."""
    with _read_only(db) as conn:
        run_rows = conn.execute(
            "SELECT id, line, outcome FROM runs WHERE ? IS NULL OR id = ? ORDER BY id",
            (run_id, run_id)).fetchall()
        lines = sorted({line for _, line, _ in run_rows}) if run_id is not None else [
            line for (line,) in conn.execute("SELECT DISTINCT line FROM events ORDER BY line")]
        findings: list[Finding] = []
        events = 0
        by_run: dict[int, list[_Event]] = {}
        for line in lines:
            line_events = _events(conn, line)
            events += len(line_events)
            findings.extend(_sequence_findings(line, [e.seq for e in line_events]))
            for event in line_events:
                if event.run_id is not None:
                    by_run.setdefault(event.run_id, []).append(event)
        runs = tuple(
            _verify_run(conn, rid, outcome, by_run.get(rid, []), legal)
            for rid, _line, outcome in run_rows
        )
    audit_entries = None
    if audit is not None and audit.exists():
        audit_entries, audit_finding = _verify_audit(audit)
        if audit_finding is not None:
            findings.append(audit_finding)
    return Verification(runs=runs, events=events, audit_entries=audit_entries,
                        findings=tuple(findings))


@contextmanager
def _read_only(db: Path) -> Iterator[sqlite3.Connection]:
    if not db.exists():
        raise RecordsUnavailable(f"no run records at {db}")
    try:
        # rw + query_only, as the reader does: a WAL file left by a killed controller is
        # recovered by the first connection, which a mode=ro one cannot do.
        conn = sqlite3.connect(f"file:{db}?mode=rw", uri=True)
    except sqlite3.Error as exc:
        raise RecordsUnavailable(f"{db}: {exc}") from exc
    try:
        conn.execute("PRAGMA query_only = ON")
        # One snapshot for every query: a controller writing meanwhile cannot make the rows
        # and their events disagree between two reads.
        conn.execute("BEGIN")
        yield conn
    except sqlite3.Error as exc:
        raise RecordsUnavailable(f"{db}: {exc}") from exc
    finally:
        conn.close()


def _events(conn: sqlite3.Connection, line: str) -> list[_Event]:
    rows = conn.execute(
        "SELECT seq, run_id, kind, payload FROM events WHERE line = ? ORDER BY seq, rowid",
        (line,))
    return [_Event(seq, run, kind, _payload(text)) for seq, run, kind, text in rows]


def _payload(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _sequence_findings(line: str, seqs: list[int]) -> list[Finding]:
    findings = []
    expected = 1
    for seq in seqs:
        if seq < expected:
            findings.append(Finding("sequence", f"line {line}: event {seq} appears twice"))
            continue
        if seq > expected:
            missing = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
            findings.append(Finding("sequence", f"line {line}: events {missing} are missing"))
        expected = seq + 1
    return findings


def _verify_run(conn: sqlite3.Connection, run_id: int, outcome: str | None,
                events: list[_Event], legal: LegalTransitions) -> RunVerification:
    findings = _row_findings(conn, run_id, events)
    passes = conn.execute(
        "SELECT layer, pass_index FROM passes WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
    findings += _pass_findings(run_id, [(int(layer), int(index)) for layer, index in passes])
    findings += _order_findings(run_id, outcome, events)
    findings += _state_findings(run_id, events, legal)
    states = sum(1 for e in events if e.kind == "state")
    resumes = sum(1 for e in events if e.kind == "run_resumed")
    return RunVerification(run_id, outcome, len(passes), states, resumes, tuple(findings))


def _row_findings(conn: sqlite3.Connection, run_id: int, events: list[_Event]) -> list[Finding]:
    findings = []
    for table, kind in PAIRED_ROWS.items():
        (rows,) = conn.execute(
            f"SELECT COUNT(*) FROM {table} WHERE run_id = ?", (run_id,)).fetchone()  # noqa: S608 - fixed names
        numbered = sum(1 for e in events if e.kind == kind)
        if rows != numbered:
            findings.append(Finding("rows", f"{rows} {table} rows but {numbered} '{kind}' "
                                    "events", run_id))
    return findings


def _pass_findings(run_id: int, passes: list[tuple[int, int]]) -> list[Finding]:
    findings = []
    expected, layer_before = 1, 0
    for layer, index in passes:
        if index < expected:
            findings.append(Finding("passes", f"pass {index} recorded again", run_id))
        elif index > expected:
            findings.append(Finding("passes", f"pass {index} follows pass {expected - 1}: "
                                    f"{index - expected} missing", run_id))
        if layer < layer_before:
            findings.append(Finding("passes", f"pass {index} is in layer {layer}, after "
                                    f"layer {layer_before}", run_id))
        expected, layer_before = max(expected, index + 1), max(layer_before, layer)
    return findings


def _order_findings(run_id: int, outcome: str | None, events: list[_Event]) -> list[Finding]:
    """The run's end (once, matching its outcome, nothing made after it) and each resume
    starting from the last recorded pass."""
    findings = []
    ends = [e for e in events if e.kind == "run_ended"]
    if len(ends) > 1:
        findings.append(Finding("passes", f"the run ended {len(ends)} times", run_id))
    if outcome is not None and not ends:
        findings.append(Finding("rows", f"outcome {outcome} without its run_ended event", run_id))
    if ends and ends[-1].payload.get("outcome") != outcome:
        findings.append(Finding("rows", f"outcome {outcome} but the run_ended event says "
                                f"{ends[-1].payload.get('outcome')}", run_id))
    ended_at = ends[0].seq if ends else None
    passes_so_far = 0
    for event in events:
        if event.kind == "pass":
            passes_so_far += 1
            if ended_at is not None and event.seq > ended_at:
                findings.append(Finding("passes", f"pass {event.payload.get('pass_index')} "
                                        "recorded after the run's end", run_id))
        elif event.kind == "run_resumed":
            cursor = event.payload.get("cursor") or {}
            resumed_from = int(cursor.get("passes_done") or 0)
            if resumed_from != passes_so_far:
                findings.append(Finding(
                    "passes", f"resumed from pass {resumed_from} with {passes_so_far} passes "
                    "recorded", run_id))
    return findings


def _state_findings(run_id: int, events: list[_Event],
                    legal: LegalTransitions) -> list[Finding]:
    findings = []
    current: str | None = INITIAL_STATE
    for event in events:
        if event.kind == "run_resumed":
            current = INITIAL_STATE
            continue
        if event.kind != "state":
            continue
        before, after = str(event.payload.get("from")), str(event.payload.get("to"))
        if current is not None and before != current:
            findings.append(Finding("states", f"event {event.seq}: {before} -> {after} follows "
                                    f"a change to {current}", run_id))
        if (before, after) not in legal:
            findings.append(Finding("states", f"event {event.seq}: {before} -> {after} is not "
                                    "a transition of the state machine", run_id))
        current = after
    return findings


def _verify_audit(path: Path) -> tuple[int | None, Finding | None]:
    try:
        with AuditTrail(path) as trail:
            result = trail.verify()
    except AuditError as exc:
        return None, Finding("audit", str(exc))
    if result.ok:
        return result.entries, None
    return result.entries, Finding(
        "audit", f"{path}: broken at entry {result.first_bad_seq}: {result.reason}")
