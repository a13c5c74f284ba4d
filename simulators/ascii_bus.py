"""A simulated ASCII serial line served over TCP (as a serial device server would) and, through
``PtyRelay``, on a pseudo-terminal.

Each request line goes to the device that owns it: on a multi-drop Alicat bus, the device
whose unit letter starts the line; on a point-to-point line, the only device. A line nobody
owns gets no answer, as on a real RS-485 bus."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Protocol

import structlog

from simulators.bus_server import BusServer, SerialWire
from simulators.faults import FaultBoard

log = structlog.get_logger(__name__)


class AsciiDevice(Protocol):
    name: str

    def owns(self, line: str) -> bool:
        """True if this device must answer the line (its unit id, or any line if alone)."""
        ...

    def handle(self, line: str) -> str | None:
        """The reply line without its terminator, or None to stay silent."""
        ...

    def step(self, dt_s: float, wall_now: float) -> None:
        """Advance the device by dt_s of process time (wall_now for safety timing)."""
        ...


class AsciiBusServer(BusServer):
    def __init__(
        self,
        name: str,
        devices: list[AsciiDevice],
        faults: FaultBoard,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        terminator: bytes = b"\r",
        baudrate: int | None = None,
    ) -> None:
        self.name = name
        # A serial line is held to its baud rate (None: served as fast as loopback allows).
        self.wire = SerialWire(baudrate, "ascii") if baudrate else None
        self.frame_hooks = []
        self.devices = devices
        self.faults = faults
        self.host = host
        self.port = port
        self.terminator = terminator
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        self.lines_in = 0
        self._log = log.bind(bus=name)

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve_client, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._log.info("ascii_bus.listening", port=self.port)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            for task in list(self._handlers):
                task.cancel()
            for task in list(self._handlers):
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await task
            await self._server.wait_closed()
            self._server = None

    def _device_names(self) -> Iterable[str]:
        return [d.name for d in self.devices]

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            while True:
                try:
                    raw = await reader.readuntil(self.terminator)
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    await reader.read(65536)  # a runaway line: drop it, as a UART would
                    continue
                # One timer per exchange: the device answers at once, and its reply leaves
                # once the request and then the reply have crossed the line.
                arrived = self._on_wire(len(raw))
                self._frame(False, raw, arrived)
                reply = self.answer(raw[: -len(self.terminator)])
                if reply:
                    sent = await self._over_wire(len(reply), ready_at=arrived)
                    writer.write(reply)
                    await writer.drain()
                    self._frame(True, reply, sent)
        except (ConnectionError, asyncio.CancelledError):
            # Only the server's close cancels a handler (while it waits for its reply to cross
            # the line); asyncio's streams log a handler that ends cancelled as an error.
            return
        finally:
            self._writers.discard(writer)
            self._handlers.discard(task)
            writer.close()

    def answer(self, raw: bytes) -> bytes | None:
        """The bytes the bus puts on the wire in reply to one request line."""
        self.lines_in += 1
        try:
            line = raw.decode("ascii").strip("\n\r ")
        except UnicodeDecodeError:
            return None  # line noise: a real device ignores what it cannot parse
        if not line:
            return None
        device = next((d for d in self.devices if d.owns(line)), None)
        if device is None:
            return None
        fault = self.faults.link_fault(device.name)
        if fault in ("silent", "disconnect"):
            return None
        reply = device.handle(line)
        if reply is None:
            return None
        framed = reply.encode("ascii") + self.terminator
        if fault == "torn":
            return framed[: max(1, len(framed) // 2)]  # no terminator arrives
        if fault == "corrupt":
            return bytes(b ^ 0x80 for b in framed[:-1]) + self.terminator
        return framed
