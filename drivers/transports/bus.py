"""What every bus master shares, whatever it speaks (Modbus or line-oriented ASCII).

One request at a time per bus (RS-485 is half-duplex), an ``urgent`` request ahead of every
request queued on the bus after the one in flight (``PriorityLock``); a lazy connect on first
use, and a reconnect after a dropped link paced by an exponential ``Backoff`` so a dead
device never turns into a busy loop; a timeout per request and a bounded number of retries;
request and failure counters; an async context manager. A protocol's transport says only how
to open, drop and test its link, and how one attempt of a request goes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self, TypeVar

import structlog

from drivers.errors import DeviceDisconnected, DeviceError
from drivers.transports.backoff import Backoff
from drivers.transports.endpoint import Endpoint
from drivers.transports.priority_lock import PriorityLock

T = TypeVar("T")


class RetryableError(Exception):
    """One attempt of a request failed in a way another attempt may cure (silence, a torn
    reply): ``error`` is what the caller gets if every attempt fails so."""

    def __init__(self, error: DeviceError) -> None:
        super().__init__(str(error))
        self.error = error


class BusTransport(ABC):
    """A master for one bus: the lock, the connection's lifecycle, retries and counters."""

    kind = "bus"  # names the transport's log events ("modbus.connected", "ascii.retry")

    def __init__(self, name: str, endpoint: Endpoint, *, timeout_s: float, retries: int,
                 backoff: Backoff | None) -> None:
        self.name = name
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.retries = retries
        self._backoff = backoff or Backoff()
        self._lock = PriorityLock()
        self.requests = 0
        self.failures = 0
        self._log = structlog.get_logger(type(self).__module__).bind(
            bus=name, endpoint=endpoint.describe())

    # -- what a protocol provides ----------------------------------------------------------
    @property
    @abstractmethod
    def connected(self) -> bool: ...

    @abstractmethod
    async def _open(self) -> None:
        """Open the link, or raise ``DeviceDisconnected`` saying why it cannot be opened."""

    @abstractmethod
    def _drop(self) -> None:
        """Forget the link (closing it if it is open); the next request reconnects."""

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def queued(self) -> int:
        """Requests waiting for the bus now (urgent and normal), the one in flight excluded."""
        urgent, normal = self._lock.waiting
        return urgent + normal

    async def connect(self) -> None:
        """Connect now; raises DeviceDisconnected if the bus cannot be reached."""
        async with self._lock.hold():
            await self._connect_locked()

    async def close(self) -> None:
        async with self._lock.hold():
            self._drop()

    async def _connect_locked(self) -> None:
        if self.connected:
            return
        self._drop()
        if not self._backoff.ready():
            raise DeviceDisconnected(self.name, "reconnect backoff in progress")
        try:
            await self._open()
        except DeviceDisconnected:
            self._backoff.failed()
            raise
        self._backoff.succeeded()
        self._log.info(f"{self.kind}.connected")

    # -- requests --------------------------------------------------------------------------
    # Every poll of every device passes here, so the path is kept short (bench/
    # bench_throughput.py): the free lock is taken without a coroutine, counting and retries
    # share one frame, and the request's description is built only when a log or an error
    # needs it (``describe``).
    async def _exclusive(self, attempt: Callable[[], Awaitable[T]],
                         describe: Callable[[], str], *, urgent: bool = False) -> T:
        """``_request`` holding the bus; ``urgent``: ahead of every request queued on it."""
        lock = self._lock
        if not lock.try_acquire():
            await lock.acquire(urgent=urgent)
        try:
            return await self._request(attempt, describe)
        finally:
            lock.release()

    async def _request(self, attempt: Callable[[], Awaitable[T]],
                       describe: Callable[[], str]) -> T:
        """One request, the bus already held: counted (and its failure), up to
        ``retries + 1`` attempts, each on a connected link (reconnecting first if it
        dropped); a ``RetryableError`` tries again, anything else ends the request."""
        self.requests += 1
        last_error: DeviceError | None = None
        try:
            for number in range(self.retries + 1):
                if not self.connected:
                    await self._connect_locked()
                try:
                    return await attempt()
                except RetryableError as retry:
                    last_error = retry.error
                    self._log.debug(f"{self.kind}.retry", request=describe(), attempt=number)
        except Exception:
            self.failures += 1
            raise
        self.failures += 1  # every attempt failed
        assert last_error is not None
        raise last_error
