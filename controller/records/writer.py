"""The run records' single writer: one thread owns the SQLite connection and commits the jobs
queued by the event loop, a group at a time (one fsync for every job waiting), each job in its
own savepoint so one bad job does not sink the others. Results go back to the loop through
`call_soon_threadsafe`, only after the commit: an awaited record is a durable record."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from controller.records.migrations import open_schema
from controller.records.schema import RecordsError, RecordsUnavailable

log = structlog.get_logger(__name__)

Work = Callable[[sqlite3.Connection], Any]
Connect = Callable[[Path], sqlite3.Connection]
FailureHandler = Callable[[RecordsUnavailable], None]

# Jobs committed together at most; bounds the latency a large backlog adds to the first job.
_MAX_GROUP = 256


def default_connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: the writer issues BEGIN/COMMIT itself.
    return sqlite3.connect(path, isolation_level=None)


@dataclass(slots=True)
class Job:
    work: Work
    future: asyncio.Future[Any] | None  # None: nobody awaits it (telemetry)
    durable: bool  # synchronous=FULL for this commit (commands, audit), else NORMAL


_STOP = Job(work=lambda _conn: None, future=None, durable=True)


def classify(exc: BaseException) -> RecordsError:
    """A storage failure (disk full, I/O) makes the records unavailable; anything else is a
    bad request (unknown run id, a value JSON cannot hold) and fails only its own job."""
    if isinstance(exc, RecordsError):
        return exc
    if isinstance(exc, sqlite3.OperationalError) or (
        isinstance(exc, sqlite3.DatabaseError)
        and not isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError)
    ):
        return RecordsUnavailable(str(exc))
    return RecordsError(f"{type(exc).__name__}: {exc}")


class SqliteWriter:
    def __init__(
        self,
        path: Path,
        loop: asyncio.AbstractEventLoop,
        on_failure: FailureHandler,
        connect: Connect,
    ) -> None:
        self._path = path
        self._loop = loop
        self._on_failure = on_failure
        self._connect = connect
        self._queue: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._synchronous: str | None = None
        self._stopped = False

    async def start(self) -> None:
        """Open the store on the writer thread; raises RecordsUnavailable if it cannot."""
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"povd-records:{self._path.name}"
        )
        self._thread.start()
        try:
            await ready
        except BaseException:
            self._stopped = True
            self._queue.put(_STOP)  # a no-op if the thread has already given up
            await asyncio.to_thread(self._thread.join)
            raise

    def submit(self, work: Work, *, durable: bool = True) -> asyncio.Future[Any]:
        if self._stopped:
            raise RecordsError("run records are closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put(Job(work, future, durable))
        return future

    def submit_nowait(self, work: Work) -> None:
        """Queue a job nobody awaits; a failure reaches only `on_failure` and the log."""
        if self._stopped:
            raise RecordsError("run records are closed")
        self._queue.put(Job(work, None, durable=False))

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        done: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put(Job(lambda _conn: None, done, durable=True))
        self._queue.put(_STOP)
        with contextlib.suppress(RecordsError):  # already reported through on_failure
            await done
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    # -- the writer thread ---------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect(self._path)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 5000")
            open_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            self._conn = self._open()
        except Exception as exc:  # every cause of a failed open is reported
            error = RecordsUnavailable(f"cannot open {self._path}: {exc}")
            self._call_soon(_settle, ready, None, error)
            return
        self._call_soon(_settle, ready, None, None)
        try:
            self._serve()
        finally:
            self._conn.close()

    def _serve(self) -> None:
        while True:
            group = [self._queue.get()]
            while group[-1] is not _STOP and len(group) < _MAX_GROUP:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = group[-1] is _STOP
            jobs = group[:-1] if stop else group
            if jobs:
                self._commit(jobs)
            if stop:
                return

    def _commit(self, jobs: list[Job]) -> None:
        conn = self._conn
        assert conn is not None
        outcomes: list[tuple[Job, Any, RecordsError | None]] = []
        try:
            self._set_synchronous(conn, "FULL" if any(j.durable for j in jobs) else "NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            outcomes.extend(self._run_job(conn, job) for job in jobs)
            conn.execute("COMMIT")
        except Exception as exc:  # any failure fails the whole group
            self._rollback(conn)
            error = classify(exc)
            if isinstance(error, RecordsUnavailable):
                self._report(error)
            for job in jobs:
                self._resolve(job, error=error)
            return
        reported = False
        for job, value, job_error in outcomes:
            if isinstance(job_error, RecordsUnavailable) and not reported:
                self._report(job_error)
                reported = True
            self._resolve(job, value=value, error=job_error)

    @staticmethod
    def _run_job(conn: sqlite3.Connection, job: Job) -> tuple[Job, Any, RecordsError | None]:
        conn.execute("SAVEPOINT job")
        try:
            value = job.work(conn)
        except Exception as exc:  # the job's failure goes to its caller
            if not conn.in_transaction:
                # SQLite rolled the whole transaction back (disk full, I/O error): every job
                # of the group is lost, so the group fails with this cause.
                raise
            try:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
            except sqlite3.Error:
                raise exc from None
            return job, None, classify(exc)
        conn.execute("RELEASE job")
        return job, value, None

    def _set_synchronous(self, conn: sqlite3.Connection, level: str) -> None:
        # Commands and audit entries get an fsync per commit; telemetry-only groups do not
        # (WAL + NORMAL survives a crash of the process, and the next FULL commit syncs them).
        if level != self._synchronous:
            conn.execute(f"PRAGMA synchronous = {level}")
            self._synchronous = level

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("records_rollback_failed", error=str(exc))

    def _report(self, error: RecordsUnavailable) -> None:
        log.error("records_write_failed", path=str(self._path), error=error.detail)
        self._call_soon(self._on_failure, error)

    def _resolve(self, job: Job, value: Any = None, error: RecordsError | None = None) -> None:
        future = job.future
        if future is None:
            if error is not None and not isinstance(error, RecordsUnavailable):
                log.error("records_job_failed", error=str(error))
            return
        self._call_soon(_settle, future, value, error)

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            # The loop has closed: nobody is left to tell.
            log.warning("records_loop_closed")


def _settle(future: asyncio.Future[Any], value: Any, error: RecordsError | None) -> None:
    if future.done():  # the caller gave up (cancelled); the record is written all the same
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
