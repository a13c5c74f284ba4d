"""The supervisor's record sink: every record of a run (state changes, setpoints, alarms,
commands) goes through one ordered queue and one writer task, so records keep their order and
never delay a reaction (rule 9: a trip's writes go out before its record).

- ``put``: queue behind the ones already queued, never wait;
- ``durable``: queue in order and wait until written (``RecordsUnavailable`` if not within
  ``timeout_s``): for commands, acknowledged only once recorded;
- ``flush``: wait until everything queued is written.

``ok`` says whether the last write succeeded; ``on_unavailable`` is called when the records
cannot be written, so the supervisor can hold the run (the controller makes no glass it
cannot account for)."""

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

    async def durable(self, write: Write) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

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
        finished, _ = await asyncio.wait({done}, timeout=self.timeout_s)
        if not finished:
            raise RecordsUnavailable(f"no answer from the records in {self.timeout_s:g} s")
        done.result()

    async def flush(self) -> None:
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
