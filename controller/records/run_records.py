"""Durable run records (domain rule 5): every state change, setpoint, alarm, operator command
(with the reason of a refusal), pass and checkpoint, in SQLite (WAL), written by one dedicated
thread so the event loop never waits on the disk. Each `async` method returns once its record
is committed: an operator command is acknowledged only after that (rule 5). Telemetry is batched
and never delays its caller.

If a write fails (disk full, I/O error) the awaiting caller gets `RecordsUnavailable` and
`on_failure` is called on the event loop, so the supervisor can hold the run safely (rule 9).

Every record except telemetry and checkpoints also appends to `events`, numbered per line, for
later republishing (MQTT). The SQL of each record is in ``rows``; here, the writer's lifecycle,
the times taken on the event loop, and the telemetry batching.

    async with RunRecords(resolve_data_dir(args.data_dir) / "records.sqlite3") as rec:
        run_id = await rec.start_run(header)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import platformdirs
import structlog

from controller.records import rows
from controller.records.reader import RecordsReader
from controller.records.schema import (
    AlarmRecord,
    AlarmTransition,
    Checkpoint,
    CommandRecord,
    EventRecord,
    Outcome,
    PassRecord,
    RecordsError,
    RecordsUnavailable,
    RunDetail,
    RunHeader,
    RunSummary,
    SetpointRecord,
    StateRecord,
)
from controller.records.writer import Connect, SqliteWriter, default_connect

__all__ = [
    "AlarmRecord",
    "Checkpoint",
    "CommandRecord",
    "EventRecord",
    "Outcome",
    "PassRecord",
    "RecordsError",
    "RecordsReader",
    "RecordsStats",
    "RecordsUnavailable",
    "RunDetail",
    "RunHeader",
    "RunRecords",
    "RunSummary",
    "SetpointRecord",
    "StateRecord",
    "records_path",
    "resolve_data_dir",
]

log = structlog.get_logger(__name__)

DATA_DIR_ENV = "POVD_DATA_DIR"
RECORDS_FILE = "records.sqlite3"


def resolve_data_dir(cli_value: str | None) -> Path:
    """Where records live: `--data-dir`, else $POVD_DATA_DIR, else the user's data dir."""
    chosen = cli_value or os.environ.get(DATA_DIR_ENV) or platformdirs.user_data_dir("povd")
    return Path(chosen).expanduser()


def records_path(data_dir: Path) -> Path:
    return data_dir / RECORDS_FILE


# After a failed or stalled write, the records count as available again only once no write
# has failed for this long (wall seconds).
RECOVERY_QUIET_S = 10.0

class RecordsStats:
    """Counters for telemetry, readable from the event loop."""

    def __init__(self) -> None:
        self.telemetry_batches = 0
        self.telemetry_dropped = 0
        self.failures = 0


class RunRecords:
    """The writer side of the run records: an async context manager, not re-entrant."""

    def __init__(
        self,
        path: Path,
        *,
        line: str = "default",
        on_failure: Callable[[RecordsUnavailable], None] | None = None,
        clock: Callable[[], float] = time.time,
        telemetry_batch: int = 200,
        telemetry_flush_s: float = 1.0,
        telemetry_max_pending: int = 20_000,
        connect: Connect = default_connect,
        timeout_s: float | None = None,
    ) -> None:
        self.path = Path(path)
        # An awaited record not written in this long (a stalled disk) fails with
        # RecordsUnavailable and is reported like a failed write; the write itself still lands
        # when the disk answers. None: wait as long as it takes (tools, tests).
        self.timeout_s = timeout_s
        self._last_failure: float | None = None  # monotonic
        self._listeners: list[Callable[[RecordsUnavailable], None]] = []
        self.line = line
        self.stats = RecordsStats()
        self._on_failure = on_failure
        self._clock = clock
        self._telemetry_batch = telemetry_batch
        self._telemetry_flush_s = telemetry_flush_s
        self._telemetry_max_pending = telemetry_max_pending
        self._connect = connect
        self._writer: SqliteWriter | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._pending: list[tuple[int | None, float, dict[str, Any]]] = []
        # Samples handed to the writer and not yet written, counted across threads.
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()

    async def __aenter__(self) -> Self:
        if self._writer is not None:
            raise RecordsError("RunRecords is not re-entrant")
        writer = SqliteWriter(self.path, asyncio.get_running_loop(), self._failed, self._connect)
        await writer.start()
        self._writer = writer
        self._flusher = asyncio.create_task(self._flush_periodically(), name="records-flush")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self._enqueue_telemetry()
        if self._writer is not None:
            await self._writer.stop()

    def reader(self) -> RecordsReader:
        return RecordsReader(self.path)

    # -- runs ------------------------------------------------------------------------------------
    async def start_run(self, header: RunHeader) -> int:
        started_at = header.started_at if header.started_at is not None else self._clock()
        run_id: int = await self._submit(
            lambda conn: rows.insert_run(conn, self.line, header, started_at))
        return run_id

    async def end_run(self, run_id: int, outcome: Outcome | str) -> None:
        result, t = Outcome(outcome), self._clock()
        await self._submit(lambda conn: rows.end_run(conn, self._at(t, run_id), result))

    # -- audit entries ---------------------------------------------------------------------------
    async def record_state(
        self, run_id: int | None, from_state: str, to_state: str, reason: str | None = None
    ) -> None:
        at, before, after = self._at(self._clock(), run_id), str(from_state), str(to_state)
        await self._submit(lambda conn: rows.insert_state(conn, at, before, after, reason))

    async def record_command(
        self,
        run_id: int | None,
        user: str,
        command: str,
        args: Mapping[str, Any] | None = None,
        *,
        accepted: bool,
        reason: str | None = None,
    ) -> None:
        """An operator action and its answer; a refusal is recorded with its reason."""
        at, args_json = self._at(self._clock(), run_id), rows.to_json(dict(args or {}))
        await self._submit(lambda conn: rows.insert_command(
            conn, at, user=user, command=command, args_json=args_json, accepted=accepted,
            reason=reason))

    async def record_setpoint(
        self, run_id: int | None, device: str, quantity: str, value: float, source: str
    ) -> None:
        at = self._at(self._clock(), run_id)
        await self._submit(lambda conn: rows.insert_setpoint(
            conn, at, device=device, quantity=quantity, value=value, source=source))

    async def record_alarm(self, run_id: int | None, event: AlarmTransition) -> None:
        at = self._at(self._clock(), run_id)
        row = rows.alarm_row(at, event)
        await self._submit(lambda conn: rows.insert_alarm(conn, at, event, row))

    async def record_pass(self, run_id: int, record: PassRecord) -> None:
        at = self._at(self._clock(), run_id)
        await self._submit(lambda conn: rows.insert_pass(conn, at, record))

    async def record_event(self, run_id: int | None, kind: str, payload: Mapping[str, Any]) -> None:
        """Anything else worth republishing (e.g. a recovery decision)."""
        at, body = self._at(self._clock(), run_id), json.loads(rows.to_json(dict(payload)))
        await self._submit(lambda conn: rows.append_event(conn, at, kind, body))

    async def checkpoint(
        self, run_id: int, layer: int, pass_index: int, state: Mapping[str, Any]
    ) -> None:
        """Where to resume from after a crash; also kept on the run row for a quick look-up."""
        at, state_json = self._at(self._clock(), run_id), rows.to_json(dict(state))
        await self._submit(lambda conn: rows.insert_checkpoint(
            conn, at, layer=layer, pass_index=pass_index, state_json=state_json))

    # -- telemetry -------------------------------------------------------------------------------
    def add_telemetry(
        self, run_id: int | None, sample: Mapping[str, Any], t: float | None = None
    ) -> None:
        """Buffer a sample; a full batch goes to the writer. Never blocks; if the writer falls
        too far behind, new samples are dropped (and counted) rather than memory growing."""
        if self._writer is None:
            raise RecordsError("run records are not open")
        with self._in_flight_lock:
            backlog = self._in_flight
        if backlog + len(self._pending) >= self._telemetry_max_pending:
            self.stats.telemetry_dropped += 1
            return
        self._pending.append((run_id, self._clock() if t is None else t, dict(sample)))
        if len(self._pending) >= self._telemetry_batch:
            self._enqueue_telemetry()

    @property
    def telemetry_pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        """Returns once everything handed over so far (telemetry included) is durable."""
        self._enqueue_telemetry()
        await self._submit(lambda _conn: None)

    def _enqueue_telemetry(self) -> None:
        if not self._pending or self._writer is None:
            return
        batch, self._pending = self._pending, []
        with self._in_flight_lock:
            self._in_flight += len(batch)
        self.stats.telemetry_batches += 1

        def work(conn: sqlite3.Connection) -> None:
            try:
                rows.insert_telemetry(conn, batch)
            finally:
                with self._in_flight_lock:
                    self._in_flight -= len(batch)

        self._writer.submit_nowait(work)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._telemetry_flush_s)
            self._enqueue_telemetry()

    # -- plumbing --------------------------------------------------------------------------------
    def _at(self, t: float, run_id: int | None) -> rows.Stamp:
        return rows.Stamp(self.line, t, run_id)

    @property
    def healthy(self) -> bool:
        """No write has failed (or stalled) for RECOVERY_QUIET_S: a disk that lets some writes
        through while others fail (full, but with a free page here and there) stays
        unavailable, so a held run is not let go to make glass it cannot account for."""
        return (self._last_failure is None
                or time.monotonic() - self._last_failure >= RECOVERY_QUIET_S)

    def add_failure_listener(self, listener: Callable[[RecordsUnavailable], None]) -> None:
        """Called on every failed or stalled write (the supervisor holds the run)."""
        self._listeners.append(listener)

    async def _submit(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._writer is None:
            raise RecordsError("run records are not open")
        future = self._writer.submit(work)
        if self.timeout_s is None:
            value = await future
        else:
            done, _ = await asyncio.wait({future}, timeout=self.timeout_s)
            if not done:
                # Cancelled so nobody waits on it; the writer thread still writes it.
                future.cancel()
                error = RecordsUnavailable(
                    f"no answer from the records in {self.timeout_s:g} s (storage stalled)")
                self._failed(error)
                raise error
            value = future.result()
        return value

    def _failed(self, error: RecordsUnavailable) -> None:
        self._last_failure = time.monotonic()
        self.stats.failures += 1
        for listener in self._listeners:
            try:
                listener(error)
            except Exception:
                log.exception("records_failure_listener_failed")
        if self._on_failure is not None:
            try:
                self._on_failure(error)
            except Exception:
                log.exception("records_on_failure_failed")
