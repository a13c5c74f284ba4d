"""Line-oriented ASCII transport: CR-terminated requests and replies over a serial port,
a pseudo-terminal, or TCP (``socket://host:port``, as a serial device server provides).

Same error model as the Modbus transport: a timeout per request, bounded retries, reconnect
with backoff, one request at a time per bus (multi-drop RS-485 is half-duplex); an ``urgent``
request goes ahead of every request queued on the line, after the one in flight."""

from __future__ import annotations

import asyncio
import contextlib

import serial_asyncio_fast

from drivers.errors import DeviceDisconnected, DeviceProtocolError, DeviceTimeout
from drivers.transports.backoff import Backoff
from drivers.transports.bus import BusTransport, RetryableError
from drivers.transports.endpoint import Endpoint

MAX_LINE = 512  # longer than any reply of our devices: more is a runaway stream, not a frame


class _LineProtocol(asyncio.Protocol):
    def __init__(self, terminator: bytes) -> None:
        self.terminator = terminator
        self.buffer = bytearray()
        self.lines: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.overflow = False
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer.extend(data)
        while (i := self.buffer.find(self.terminator)) >= 0:
            line = bytes(self.buffer[:i])
            del self.buffer[: i + len(self.terminator)]
            self.lines.put_nowait(line.lstrip(b"\n"))
        if len(self.buffer) > MAX_LINE:
            self.overflow = True
            self.buffer.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()

    def discard_pending(self) -> None:
        """Forget replies that arrived late to an earlier request."""
        self.buffer.clear()
        self.overflow = False
        while not self.lines.empty():
            self.lines.get_nowait()


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
            lambda: self._retrying(line, lambda: self._attempt(line, reply)), urgent=urgent)

    async def _attempt(self, line: str, reply: bool) -> str:
        protocol, transport = self._protocol, self._transport
        assert protocol is not None
        assert transport is not None
        protocol.discard_pending()
        transport.write(line.encode("ascii") + self.terminator)
        if not reply:
            return ""
        get = asyncio.ensure_future(protocol.lines.get())
        closed = asyncio.ensure_future(protocol.closed.wait())
        try:
            done, _ = await asyncio.wait(
                {get, closed}, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            get.cancel()
            closed.cancel()
        if get in done:
            return self._decode(line, get.result())
        if closed in done or protocol.closed.is_set():
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
