"""The SQL of each run record: one function per kind that inserts its row and appends its
numbered event (``append_event``), given a connection. They run on the records' writer thread,
the only writer, so the events' ``MAX(seq) + 1`` cannot race; the values (times included) are
taken on the event loop by ``RunRecords`` before the work is handed over."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.records.schema import (
    PASS_FIELDS,
    AlarmTransition,
    Outcome,
    PassRecord,
    RecordsError,
    RunHeader,
)


@dataclass(frozen=True, slots=True)
class Stamp:
    """Where and when a record belongs: the line (its events are numbered per line), the time
    taken on the event loop, and the run (None outside a run)."""

    line: str
    t: float
    run_id: int | None


def to_json(value: Any) -> str:
    # default=str: a timestamp or an enum in a payload must not lose the record.
    return json.dumps(value, default=str, separators=(",", ":"))


def append_event(conn: sqlite3.Connection, at: Stamp, kind: str, payload: Any) -> None:
    (seq,) = conn.execute(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE line = ?", (at.line,)
    ).fetchone()
    conn.execute(
        "INSERT INTO events (line, seq, t, run_id, kind, payload) VALUES (?, ?, ?, ?, ?, ?)",
        (at.line, seq, at.t, at.run_id, kind, to_json(payload)),
    )


def insert_run(conn: sqlite3.Connection, line: str, header: RunHeader, started_at: float) -> int:
    cur = conn.execute(
        "INSERT INTO runs (recipe_name, recipe_text, recipe_hash, line, machine, operator,"
        " preform_serial, bait_rod_lot, precursor_lot, started_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (header.recipe_name, header.recipe_text, header.recipe_hash, header.line,
         header.machine, header.operator, header.preform_serial, header.bait_rod_lot,
         header.precursor_lot, started_at),
    )
    run_id = cur.lastrowid
    assert run_id is not None
    payload = {"recipe": header.recipe_name, "recipe_hash": header.recipe_hash}
    append_event(conn, Stamp(line, started_at, run_id), "run_started",
                 payload | {"run_id": run_id})
    return run_id


def end_run(conn: sqlite3.Connection, at: Stamp, outcome: Outcome) -> None:
    cur = conn.execute(
        "UPDATE runs SET ended_at = ?, outcome = ? WHERE id = ?", (at.t, outcome.value, at.run_id)
    )
    if cur.rowcount != 1:
        raise RecordsError(f"no run {at.run_id}")
    append_event(conn, at, "run_ended", {"run_id": at.run_id, "outcome": outcome.value})


def insert_state(conn: sqlite3.Connection, at: Stamp, from_state: str, to_state: str,
                 reason: str | None) -> None:
    conn.execute(
        "INSERT INTO state_changes (run_id, t, from_state, to_state, reason)"
        " VALUES (?, ?, ?, ?, ?)",
        (at.run_id, at.t, from_state, to_state, reason),
    )
    append_event(conn, at, "state",
                 {"from": from_state, "to": to_state, "reason": reason})


def insert_command(conn: sqlite3.Connection, at: Stamp, *, user: str, command: str,
                   args_json: str, accepted: bool, reason: str | None) -> None:
    conn.execute(
        "INSERT INTO commands (run_id, t, user, command, args, accepted, reason)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (at.run_id, at.t, user, command, args_json, int(accepted), reason),
    )
    payload = {"user": user, "command": command, "args": json.loads(args_json),
               "accepted": accepted, "reason": reason}
    append_event(conn, at, "command", payload)


def insert_setpoint(conn: sqlite3.Connection, at: Stamp, *, device: str, quantity: str,
                    value: float, source: str) -> None:
    conn.execute(
        "INSERT INTO setpoints (run_id, t, device, quantity, value, source)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (at.run_id, at.t, device, quantity, float(value), source),
    )
    payload = {"device": device, "quantity": quantity, "value": value, "source": source}
    append_event(conn, at, "setpoint", payload)


def alarm_row(at: Stamp, event: AlarmTransition) -> tuple[Any, ...]:
    """Taken on the event loop: the alarm's values as they were at its transition."""
    return (at.run_id, at.t, event.time, event.alarm_id, event.tag, event.from_state.value,
            event.to_state.value, event.action, event.priority.value, event.category.value,
            event.message, event.user, event.value, int(event.first_out), event.note)


def insert_alarm(conn: sqlite3.Connection, at: Stamp, event: AlarmTransition,
                 row: tuple[Any, ...]) -> None:
    conn.execute(
        "INSERT INTO alarms (run_id, t, alarm_time, alarm_id, tag, from_state, to_state,"
        " action, priority, category, message, user, value, first_out, note)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        row,
    )
    payload = {"alarm_id": event.alarm_id, "from": event.from_state.value,
               "to": event.to_state.value, "action": event.action,
               "priority": event.priority.value, "message": event.message, "user": event.user,
               "value": event.value, "first_out": event.first_out}
    append_event(conn, at, "alarm", payload)


_INSERT_PASS = (
    f"INSERT INTO passes (run_id, {', '.join(PASS_FIELDS)})"  # noqa: S608 - fixed names
    f" VALUES (?{', ?' * len(PASS_FIELDS)})"
)


def insert_pass(conn: sqlite3.Connection, at: Stamp, record: PassRecord) -> None:
    conn.execute(_INSERT_PASS, (at.run_id, *(getattr(record, f) for f in PASS_FIELDS)))
    payload: dict[str, Any] = {"run_id": at.run_id, "layer": record.layer,
                               "pass_index": record.pass_index,
                               "diameter_mm": record.diameter_mm,
                               "deposited_g": record.deposited_g}
    append_event(conn, at, "pass", payload)


def insert_checkpoint(conn: sqlite3.Connection, at: Stamp, *, layer: int, pass_index: int,
                      state_json: str) -> None:
    """Where to resume from after a crash; also kept on the run row for a quick look-up."""
    summary = to_json({"t": at.t, "layer": layer, "pass_index": pass_index})
    conn.execute(
        "INSERT INTO checkpoints (run_id, t, layer, pass_index, state) VALUES (?, ?, ?, ?, ?)",
        (at.run_id, at.t, layer, pass_index, state_json),
    )
    conn.execute("UPDATE runs SET last_checkpoint = ? WHERE id = ?", (summary, at.run_id))


def insert_telemetry(conn: sqlite3.Connection,
                     batch: Iterable[tuple[int | None, float, Mapping[str, Any]]]) -> None:
    conn.executemany(
        "INSERT INTO telemetry (run_id, t, sample) VALUES (?, ?, ?)",
        [(run_id, t, to_json(sample)) for run_id, t, sample in batch],
    )
