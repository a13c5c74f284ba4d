"""Synchronous readers of the run records, usable without the writer (the CLI, a report, the
recovery check at start-up). Each call opens a short-lived read-only connection: WAL lets it
read while the controller writes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from controller.records.migrations import table_columns
from controller.records.schema import (
    PASS_FIELDS,
    AlarmRecord,
    Checkpoint,
    CommandRecord,
    EventRecord,
    Outcome,
    PassRecord,
    RecordsUnavailable,
    RunDetail,
    RunSummary,
    SetpointRecord,
    StateRecord,
)

_SUMMARY_COLUMNS = (
    "id, recipe_name, recipe_hash, line, machine, operator, preform_serial, bait_rod_lot, "
    "precursor_lot, started_at, ended_at, outcome"
)


_STATE_COLUMNS = "t, from_state, to_state, reason"
_COMMAND_COLUMNS = "t, user, command, args, accepted, reason"
_SETPOINT_COLUMNS = "t, device, quantity, value, source"
_ALARM_COLUMNS = ("t, alarm_time, alarm_id, tag, from_state, to_state, action, priority, "
                  "category, message, user, value, first_out, note")


class _RunRows:
    """One run's rows of a table, in the order they were written."""

    def __init__(self, conn: sqlite3.Connection, run_id: int) -> None:
        self._conn = conn
        self._run_id = run_id

    def of(self, table: str, columns: str) -> list[sqlite3.Row]:
        return self._conn.execute(
            f"SELECT {columns} FROM {table} WHERE run_id = ? ORDER BY id",  # noqa: S608 - fixed names
            (self._run_id,),
        ).fetchall()


def _passes(conn: sqlite3.Connection, rows: _RunRows) -> list[PassRecord]:
    """The columns the file has (one the writer has not migrated yet lacks the newer ones:
    those fields read None), the 0/1 of ``limited`` as a bool."""
    present = table_columns(conn, "passes")
    columns = [name for name in PASS_FIELDS if name in present]
    records = []
    for row in rows.of("passes", ", ".join(columns)):
        values = dict(row)
        if values.get("limited") is not None:
            values["limited"] = bool(values["limited"])
        records.append(PassRecord(**values))
    return records


def _command(row: sqlite3.Row) -> CommandRecord:
    return CommandRecord(t=row["t"], user=row["user"], command=row["command"],
                         args=json.loads(row["args"]), accepted=bool(row["accepted"]),
                         reason=row["reason"])


def _summary(row: sqlite3.Row) -> RunSummary:
    return _summary_from(dict(row))


class RecordsReader:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if not self.path.exists():
            raise RecordsUnavailable(f"no run records at {self.path}")
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True)
        except sqlite3.Error as exc:
            raise RecordsUnavailable(f"{self.path}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            # Read-only by intent: this connection never writes (the writer thread owns writes).
            conn.execute("PRAGMA query_only = ON")
            yield conn
        finally:
            conn.close()

    def _query(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        with self._connect() as conn:
            return conn.execute(sql, params).fetchall()

    def list_runs(self) -> list[RunSummary]:
        rows = self._query(f"SELECT {_SUMMARY_COLUMNS} FROM runs ORDER BY id")  # noqa: S608 - fixed columns
        return [_summary(r) for r in rows]

    def interrupted_runs(self) -> list[RunSummary]:
        """Runs that started and never ended: the controller died during them."""
        rows = self._query(
            f"SELECT {_SUMMARY_COLUMNS} FROM runs "  # noqa: S608 - fixed columns
            "WHERE ended_at IS NULL AND outcome IS NULL ORDER BY id"
        )
        return [_summary(r) for r in rows]

    def get_run(self, run_id: int) -> RunDetail | None:
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT {_SUMMARY_COLUMNS}, recipe_text FROM runs WHERE id = ?",  # noqa: S608
                (run_id,),
            ).fetchone()
            if row is None:
                return None
            values = dict(row)
            recipe_text = values.pop("recipe_text")
            rows = _RunRows(conn, run_id)
            passes = _passes(conn, rows)
            states = [StateRecord(**dict(r)) for r in rows.of("state_changes", _STATE_COLUMNS)]
            commands = [_command(r) for r in rows.of("commands", _COMMAND_COLUMNS)]
            setpoints = [SetpointRecord(**dict(r))
                         for r in rows.of("setpoints", _SETPOINT_COLUMNS)]
            alarms = [AlarmRecord(**{**dict(r), "first_out": bool(r["first_out"])})
                      for r in rows.of("alarms", _ALARM_COLUMNS)]
        return RunDetail(
            run=_summary_from(values),
            recipe_text=recipe_text,
            passes=passes,
            alarms=alarms,
            states=states,
            commands=commands,
            setpoints=setpoints,
            last_checkpoint=self.last_checkpoint(run_id),
        )

    def last_checkpoint(self, run_id: int) -> Checkpoint | None:
        rows = self._query(
            "SELECT run_id, t, layer, pass_index, state FROM checkpoints "
            "WHERE run_id = ? ORDER BY id DESC LIMIT 1",
            run_id,
        )
        if not rows:
            return None
        r = rows[0]
        return Checkpoint(r["run_id"], r["t"], r["layer"], r["pass_index"], json.loads(r["state"]))

    def events_since(
        self, seq: int, line: str | None = None, limit: int = 1000
    ) -> list[EventRecord]:
        """Events with a sequence number above `seq` (for one line, or every line), in order."""
        sql = "SELECT line, seq, t, run_id, kind, payload FROM events WHERE seq > ?"
        params: list[Any] = [seq]
        if line is not None:
            sql += " AND line = ?"
            params.append(line)
        rows = self._query(sql + " ORDER BY line, seq LIMIT ?", *params, limit)
        return [
            EventRecord(
                r["line"], r["seq"], r["t"], r["run_id"], r["kind"], json.loads(r["payload"])
            )
            for r in rows
        ]

    def last_seq(self, line: str) -> int:
        """The newest event's sequence number for a line (0 when it has none)."""
        rows = self._query("SELECT MAX(seq) AS seq FROM events WHERE line = ?", line)
        return int(rows[0]["seq"] or 0) if rows else 0

    def telemetry(self, run_id: int | None,
                  since_t: float | None = None) -> list[tuple[float, dict[str, Any]]]:
        """The run's samples in time order; ``since_t``: only those at or after it."""
        rows = self._query(
            "SELECT t, sample FROM telemetry WHERE run_id IS ? AND t >= ? ORDER BY t, id",
            run_id, float("-inf") if since_t is None else since_t,
        )
        return [(r["t"], json.loads(r["sample"])) for r in rows]


def _summary_from(values: dict[str, Any]) -> RunSummary:
    outcome = values.pop("outcome")
    return RunSummary(**values, outcome=Outcome(outcome) if outcome is not None else None)
