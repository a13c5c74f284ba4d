"""Serve a TCP-served serial bus on a pseudo-terminal too.

The relay opens a pty pair and shuttles bytes between its master end and a TCP connection to
the bus server, so the client opens the slave path (``/dev/pts/N``) as it would a USB-serial
adapter. The relay keeps its own handle on the slave open: without it, the master reads EIO
whenever no client has the port open, and the relay would have to reopen everything."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty

import structlog

log = structlog.get_logger(__name__)


class PtyRelay:
    def __init__(self, name: str, host: str, port: int) -> None:
        self.name = name
        self.host = host
        self.port = port
        self._master = -1
        self._slave = -1
        self.path = ""
        self._task: asyncio.Task[None] | None = None
        self._to_pty: asyncio.Queue[bytes] = asyncio.Queue()

    async def start(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self._task = asyncio.create_task(self._run(), name=f"pty-{self.name}")
        log.info("pty_relay.started", bus=self.name, path=self.path)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.05)  # the bus is 'disconnected': the line goes quiet
                continue
            from_pty: asyncio.Queue[bytes] = asyncio.Queue()

            def readable(queue: asyncio.Queue[bytes] = from_pty) -> None:
                try:
                    data = os.read(self._master, 4096)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return
                if data:
                    queue.put_nowait(data)

            loop.add_reader(self._master, readable)
            try:
                await self._pump(reader, writer, from_pty)
            finally:
                loop.remove_reader(self._master)
                writer.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        from_pty: asyncio.Queue[bytes],
    ) -> None:
        async def up() -> None:
            while True:
                writer.write(await from_pty.get())
                await writer.drain()

        async def down() -> None:
            while data := await reader.read(4096):
                os.write(self._master, data)

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except ConnectionError:
            pass
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                    await task
