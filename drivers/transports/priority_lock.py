"""A bus lock with two queues: urgent acquirers go ahead of every waiting normal one.

A half-duplex bus carries one request at a time. The safety reaction's writes (RF off, the
PLC's outputs, a carriage stop) must not wait behind the polls already queued on their bus:
an urgent acquirer is served as soon as the holder releases (the request in flight always
finishes first), before any normal waiter, first come first served within each queue.

Ownership passes directly from the releasing holder to the next waiter, so a newcomer never
slips in between; a waiter cancelled after being handed the lock passes it on.

Every request on every bus passes this lock, so the free lock is taken without a coroutine
(``try_acquire``) and ``hold`` is a plain class, not a generator-based context manager
(bench/bench_throughput.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from types import TracebackType


class PriorityLock:
    __slots__ = ("_locked", "_normal", "_urgent")

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

    def try_acquire(self) -> bool:
        """Take the lock if it is free and nobody waits for it (never jumps the queue);
        False, and nothing changed, otherwise."""
        if self._locked or self._urgent or self._normal:
            return False
        self._locked = True
        return True

    async def acquire(self, *, urgent: bool = False) -> None:
        if self.try_acquire():
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

    def reserve(self) -> asyncio.Future[None]:
        """Queue an urgent claim now, without waiting for it: the future is done once the
        lock is ours (at once if it is free). Give it back with ``withdraw``."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.try_acquire():
            future.set_result(None)
        else:
            self._urgent.append(future)
        return future

    def withdraw(self, claim: asyncio.Future[None]) -> None:
        """End a ``reserve``d claim: release the lock if it was handed over, otherwise leave
        the queue (and nobody waits on our behalf)."""
        if claim.done() and not claim.cancelled():
            self.release()
            return
        with contextlib.suppress(ValueError):
            self._urgent.remove(claim)
        claim.cancel()

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

    def hold(self, *, urgent: bool = False) -> _Hold:
        """``async with lock.hold(urgent=...)``: acquire, and release on the way out."""
        return _Hold(self, urgent)


class _Hold:
    __slots__ = ("_lock", "_urgent")

    def __init__(self, lock: PriorityLock, urgent: bool) -> None:
        self._lock = lock
        self._urgent = urgent

    async def __aenter__(self) -> None:
        if not self._lock.try_acquire():
            await self._lock.acquire(urgent=self._urgent)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()
