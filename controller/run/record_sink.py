"""The supervisor's record sink: every record of a run (state changes, setpoints, alarms,
commands) goes through one ordered queue and one writer task, so records keep their order and
never delay a reaction (rule 9: a trip's writes go out before its record).

- ``put``: queue behind the ones already queued, never wait;
- ``submit``: queue in order, never wait; the future tells when it is written (stop and
  abort act first and answer with their record pending, rule 9);
- ``durable``: queue in order and wait until written (``RecordsUnavailable`` if not within
  ``timeout_s``): for commands, acknowledged only once recorded;
- ``settle``: wait, at most ``timeout_s``, until everything queued is written.

``ok`` says whether the last write succeeded; ``on_unavailable`` is called when the records
cannot be written, so the supervisor can hold the run (the controller makes no glass it
cannot account for). Every wait here is bounded: a stalled disk never holds a command, a
lock or the executor longer than ``timeout_s``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from controller.records.schema import RecordsUnavailable

log = structlog.get_logger(__name__)

Write = Callable[[], Awaitable[Any]]


class RecordSink:
    def __init__(self, *, timeout_s: float,
                 on_unavailable: Callable[[RecordsUnavailable], None]) -> None:
        self.timeout_s = timeout_s
        self.ok = True
        self._on_unavailable = on_unavailable
        self._queue: asyncio.Queue[Write] = asyncio.Queue()

    def put(self, write: Write) -> None:
        self._queue.put_nowait(write)

    def submit(self, write: Write) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Nobody may be left to read a late failure: read it here so it is never "unretrieved".
        done.add_done_callback(lambda f: f.cancelled() or f.exception())

        async def tracked() -> None:
            try:
                await write()
            except Exception as exc:
                if not done.done():
                    done.set_exception(exc)
                raise
            if not done.done():
                done.set_result(None)

        self.put(tracked)
        return done

    async def durable(self, write: Write) -> None:
        done = self.submit(write)
        if not await self.written(done):
            raise RecordsUnavailable(f"no answer from the records in {self.timeout_s:g} s")
        done.result()

    async def written(self, done: asyncio.Future[None]) -> bool:
        """Wait at most ``timeout_s`` for a submitted record; whether it was written (or
        failed: ``done.exception()`` then says why)."""
        finished, _ = await asyncio.wait({done}, timeout=self.timeout_s)
        return bool(finished)

    async def settle(self) -> bool:
        """Wait at most ``timeout_s`` for everything queued; whether it all got written."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout=self.timeout_s)
        except TimeoutError:
            return False
        return True

    async def flush(self) -> None:
        """Wait until everything queued is written, however long (tests and tools, which
        check what was recorded; never on a command's or the executor's path)."""
        await self._queue.join()

    async def drain(self, timeout_s: float) -> None:
        """Flush, but give up after ``timeout_s`` (shutting down)."""
        await asyncio.wait_for(self._queue.join(), timeout=timeout_s)

    async def run(self) -> None:
        """The writer task: one record at a time, in order, forever."""
        while True:
            write = await self._queue.get()
            try:
                await write()
                self.ok = True
            except RecordsUnavailable as exc:
                self.ok = False
                log.error("records.unavailable", error=str(exc))  # noqa: TRY400 - expected: disk full, I/O error
                self._on_unavailable(exc)
            except Exception:
                log.exception("records.write_failed")
            finally:
                self._queue.task_done()
