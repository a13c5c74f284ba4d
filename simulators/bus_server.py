"""What every simulated bus server shares, whatever its protocol: start and stop, and the
'disconnect' fault (every connection dropped, nobody listening, until the fault ends). A
protocol's server says how it listens, how it closes and which devices it carries."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable

from simulators.faults import FaultBoard

WATCH_S = 0.02  # how often the disconnect fault is looked at (wall)


class BusServer(ABC):
    name: str
    faults: FaultBoard
    _watch: asyncio.Task[None] | None = None

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
