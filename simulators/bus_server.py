"""What every simulated bus server shares, whatever its protocol: start and stop, the
'disconnect' fault (every connection dropped, nobody listening, until the fault ends), the
serial line's timing (``SerialWire``) and the frame hooks. A protocol's server says how it
listens, how it closes and which devices it carries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

from controller.config.bus_budget import CHAR_BITS, frame_s
from simulators.faults import FaultBoard

WATCH_S = 0.02  # how often the disconnect fault is looked at (wall)

# Called for every frame a bus carries: (bus name, sending, frame bytes, monotonic time). A
# request counts as received when its last character has arrived (on a serial bus, after its
# time on the wire); a reply as sent when it has left the wire. Benchmarks timestamp here.
FrameHook = Callable[[str, bool, bytes, float], None]


class SerialWire:
    """A serial line's timing: a frame holds the line for its characters at the baud rate (10
    bits each, 8N1) and then the protocol's gap (RTU's 3.5 characters), one frame at a time
    (RS-485 is half-duplex), whoever is connected. Never faster than the wire; the event loop's
    timer makes it up to about a millisecond slower. ``paced = False`` lets frames through as
    fast as loopback allows (benchmarks of the software alone)."""

    def __init__(self, baudrate: int, protocol: str) -> None:
        if baudrate <= 0:
            raise ValueError(f"baud rate must be positive, got {baudrate}")
        self.baudrate = baudrate
        self.protocol = protocol
        self.paced = True
        self.busy_s = 0.0  # line time carried so far (characters and gaps): utilisation
        self.frames = 0
        self._free_at = 0.0

    def reserve(self, frame_bytes: int, ready_at: float | None = None) -> float:
        """Put a frame on the line as soon as it is free and ready (a reply: once its request
        has arrived, however late the event loop woke for it; else now): the monotonic time
        its last character arrives."""
        now = time.monotonic()
        self.frames += 1
        if not self.paced:
            return now
        start = max(now if ready_at is None else ready_at, self._free_at)
        held = frame_s(frame_bytes, self.baudrate, self.protocol)
        self._free_at = start + held
        self.busy_s += held
        return start + frame_bytes * CHAR_BITS / self.baudrate

    async def carry(self, frame_bytes: int, ready_at: float | None = None) -> float:
        """Wait until a frame has crossed the line; returns when it arrived (monotonic)."""
        arrives = self.reserve(frame_bytes, ready_at)
        delay = arrives - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        return arrives


class BusServer(ABC):
    name: str
    faults: FaultBoard
    _watch: asyncio.Task[None] | None = None
    wire: SerialWire | None = None  # None: a TCP link, not paced
    frame_hooks: list[FrameHook]

    def _on_wire(self, frame_bytes: int) -> float:
        """Book a frame that has begun to arrive: when its last character will have."""
        if self.wire is None:
            return time.monotonic()
        return self.wire.reserve(frame_bytes)

    async def _over_wire(self, frame_bytes: int, ready_at: float | None = None) -> float:
        """Wait for a frame to cross the serial line (at once on a TCP link): when it did."""
        if self.wire is None:
            return time.monotonic()
        return await self.wire.carry(frame_bytes, ready_at)

    def _frame(self, sending: bool, frame: bytes, at: float) -> None:
        for hook in self.frame_hooks:
            hook(self.name, sending, frame, at)

    @property
    @abstractmethod
    def listening(self) -> bool: ...

    @abstractmethod
    async def _listen(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...

    @abstractmethod
    def _device_names(self) -> Iterable[str]: ...

    async def start(self) -> None:
        await self._listen()
        self._watch = asyncio.create_task(self._watch_disconnect(), name=f"bus-{self.name}")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await self._close()

    def _disconnect_active(self) -> bool:
        return any(self.faults.is_active(name, "disconnect") for name in self._device_names())

    async def _watch_disconnect(self) -> None:
        """A 'disconnect' fault drops every connection and stops listening until it ends."""
        while True:
            await asyncio.sleep(WATCH_S)
            if self._disconnect_active() and self.listening:
                await self._close()
            elif not self._disconnect_active() and not self.listening:
                await self._listen()
