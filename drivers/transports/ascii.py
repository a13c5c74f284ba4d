"""Line-oriented ASCII transport: CR-terminated requests and replies over a serial port,
a pseudo-terminal, or TCP (``socket://host:port``, as a serial device server provides).

Same error model as the Modbus transport: a timeout per request, bounded retries, reconnect
with backoff, one request at a time per bus (multi-drop RS-485 is half-duplex); an ``urgent``
request goes ahead of every request queued on the line, after the one in flight."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import deque

import serial_asyncio_fast

from drivers.errors import DeviceDisconnected, DeviceProtocolError, DeviceTimeout
from drivers.transports.backoff import Backoff
from drivers.transports.bus import BusTransport, RetryableError
from drivers.transports.endpoint import Endpoint

MAX_LINE = 512  # longer than any reply of our devices: more is a runaway stream, not a frame


class _End(enum.Enum):
    """Why a wait for a reply line ended without one."""

    TIMED_OUT = "timed out"
    CLOSED = "closed"


def _settle(waiter: asyncio.Future[bytes | _End], outcome: bytes | _End) -> None:
    if not waiter.done():
        waiter.set_result(outcome)


class _LineProtocol(asyncio.Protocol):
    """Splits the stream into lines and hands each to the request waiting for it.

    A reply costs one future (``next_line``): no task, no queue getter, and no timer of its
    own, so the ASCII path stays close to a bare stream reader (bench/bench_throughput.py).
    The reply timeout is a deadline that each request moves on; one timer stands for all of
    them and, when it fires early (the deadline has moved since it was set), is set again
    for the current deadline. Requests follow each other far faster than a timeout, so one
    timer serves thousands of them instead of one ``call_later`` and ``cancel`` each."""

    def __init__(self, terminator: bytes) -> None:
        self.terminator = terminator
        self.buffer = bytearray()
        self._lines: deque[bytes] = deque()  # arrived while no request was waiting
        self._waiter: asyncio.Future[bytes | _End] | None = None
        self._deadline = 0.0  # loop time at which the waiting request times out
        self._timer: asyncio.TimerHandle | None = None
        self.closed = asyncio.Event()
        self.overflow = False
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer.extend(data)
        while (i := self.buffer.find(self.terminator)) >= 0:
            line = bytes(self.buffer[:i]).lstrip(b"\n")
            del self.buffer[: i + len(self.terminator)]
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(line)
            else:
                self._lines.append(line)
        if len(self.buffer) > MAX_LINE:
            self.overflow = True
            self.buffer.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiter is not None:
            _settle(self._waiter, _End.CLOSED)

    def discard_pending(self) -> None:
        """Forget replies that arrived late to an earlier request."""
        self.buffer.clear()
        self.overflow = False
        self._lines.clear()

    async def next_line(self, timeout_s: float) -> bytes | _End:
        """The next line, or why none came: ``timeout_s`` passed, or the link closed."""
        if self._lines:
            return self._lines.popleft()
        if self.closed.is_set():
            return _End.CLOSED
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bytes | _End] = loop.create_future()
        self._waiter = waiter
        self._deadline = deadline = loop.time() + timeout_s
        timer = self._timer
        if timer is None or timer.when() > deadline:  # none set, or set for a later time
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._on_timer)
        try:
            return await waiter
        finally:
            self._waiter = None

    def _on_timer(self) -> None:
        timer, self._timer = self._timer, None
        waiter = self._waiter
        if timer is None or waiter is None or waiter.done():
            return  # no request waiting: the next one sets a timer again
        if self._deadline <= timer.when():
            waiter.set_result(_End.TIMED_OUT)
        else:  # a later request moved the deadline on since this timer was set
            self._timer = asyncio.get_running_loop().call_at(self._deadline, self._on_timer)


class AsciiTransport(BusTransport):
    """An ASCII master for one line (point-to-point or multi-drop)."""

    kind = "ascii"

    def __init__(
        self,
        name: str,
        endpoint: Endpoint,
        *,
        timeout_s: float = 0.25,
        retries: int = 1,
        terminator: bytes = b"\r",
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(name, endpoint, timeout_s=timeout_s, retries=retries, backoff=backoff)
        self.terminator = terminator
        self._transport: asyncio.Transport | None = None
        self._protocol: _LineProtocol | None = None

    @property
    def connected(self) -> bool:
        return self._protocol is not None and not self._protocol.closed.is_set()

    async def close(self) -> None:
        async with self._lock.hold():
            protocol = self._protocol
            self._drop()
        if protocol is not None:
            # pyserial-asyncio closes a serial port in a background task: wait for it, so a
            # closed transport owns no task and the port is free when close() returns.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(protocol.closed.wait(), timeout=1.0)

    def _drop(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = None
        self._protocol = None

    async def _open(self) -> None:
        protocol = _LineProtocol(self.terminator)
        loop = asyncio.get_running_loop()
        try:
            # A serial device server is plain TCP: open it directly, since pyserial's
            # socket:// handler sleeps 0.3 s on the event loop when it closes.
            host, port = self.endpoint.host, self.endpoint.port
            opening = (
                loop.create_connection(lambda: protocol, host or "127.0.0.1", port or 0)
                if self.endpoint.path is None
                else serial_asyncio_fast.create_serial_connection(
                    loop, lambda: protocol, self.endpoint.path, baudrate=self.endpoint.baudrate
                )
            )
            transport, _ = await asyncio.wait_for(opening, timeout=max(1.0, self.timeout_s * 4))
        except (OSError, TimeoutError, ValueError) as exc:
            raise DeviceDisconnected(
                self.name, f"cannot open {self.endpoint.describe()}: {exc}"
            ) from exc
        self._transport = transport
        self._protocol = protocol

    async def request(self, line: str, *, reply: bool = True, urgent: bool = False) -> str:
        """Send one line and return the reply line (without its terminator). ``urgent``: ahead
        of every request queued on the line (the one in flight finishes first)."""
        return await self._exclusive(
            lambda: self._attempt(line, reply), lambda: line, urgent=urgent)

    async def _attempt(self, line: str, reply: bool) -> str:
        protocol, transport = self._protocol, self._transport
        assert protocol is not None
        assert transport is not None
        protocol.discard_pending()
        transport.write(line.encode("ascii") + self.terminator)
        if not reply:
            return ""
        raw = await protocol.next_line(self.timeout_s)
        if isinstance(raw, bytes):
            return self._decode(line, raw)
        if raw is _End.CLOSED or protocol.closed.is_set():
            self._drop()
            raise DeviceDisconnected(self.name, "link closed during request")
        if protocol.overflow or protocol.buffer:
            raise RetryableError(DeviceProtocolError(
                self.name, repr(line), f"unterminated reply {bytes(protocol.buffer)[:40]!r}"
            ))
        raise RetryableError(DeviceTimeout(self.name, repr(line), self.timeout_s))

    def _decode(self, line: str, raw: bytes) -> str:
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise DeviceProtocolError(
                self.name, repr(line), f"non-ASCII reply {raw[:40]!r}"
            ) from exc
