"""A bus lock with two queues: urgent acquirers go ahead of every waiting normal one.

A half-duplex bus carries one request at a time. The safety reaction's writes (RF off, the
PLC's outputs, a carriage stop) must not wait behind the polls already queued on their bus:
an urgent acquirer is served as soon as the holder releases (the request in flight always
finishes first), before any normal waiter, first come first served within each queue.

Ownership passes directly from the releasing holder to the next waiter, so a newcomer never
slips in between; a waiter cancelled after being handed the lock passes it on."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class PriorityLock:
    def __init__(self) -> None:
        self._locked = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        return self._locked

    @property
    def waiting(self) -> tuple[int, int]:
        """(urgent, normal) acquirers waiting now."""
        return len(self._urgent), len(self._normal)

    async def acquire(self, *, urgent: bool = False) -> None:
        if not self._locked and not self._urgent and not self._normal:
            self._locked = True
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._normal
        queue.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # handed over just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(future)
            raise

    def release(self) -> None:
        if not self._locked:
            raise RuntimeError("PriorityLock released while not held")
        for queue in (self._urgent, self._normal):
            while queue:
                future = queue.popleft()
                if not future.done():
                    future.set_result(None)  # ownership moves on; _locked stays True
                    return
        self._locked = False

    @contextlib.asynccontextmanager
    async def hold(self, *, urgent: bool = False) -> AsyncIterator[None]:
        await self.acquire(urgent=urgent)
        try:
            yield
        finally:
            self.release()
