"""Modbus TCP and RTU transport on pymodbus's async clients.

One instance per bus. RS-485 is half-duplex, so requests on a bus are serialised by a lock;
a write marked ``urgent`` (the safety reaction's) goes ahead of every request queued on the
bus, after the one in flight (``PriorityLock``); each request has its own timeout and a
bounded number of retries; a dropped link is reconnected on the next request, paced by an
exponential backoff so a dead device never turns into a busy loop. Failures surface as the
typed errors of ``drivers.errors``.

On Modbus TCP an urgent write need not wait for a *read* in flight either: the transport keeps a
second connection to the device (the urgent link), and an urgent write that finds a read in
flight goes over it at once (the RF generator's RF off no longer waits for a poll's reply). It
still orders like any urgent request: it claims the main link's lock as it starts, so nothing
queued there goes out before it is answered, and a *write* in flight is waited for (two writes
on two connections could reach the device in either order). The urgent link is opened with the
main one; a device that refuses it (or closes it) gets none for a while: logged, tried again in
the background, paced, and meanwhile an urgent write waits for the read as before. A serial
line, or RTU framing through a device server, has one master: no second link."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence

from pymodbus import ModbusException
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from drivers.errors import (
    DeviceDisconnected,
    DeviceExceptionResponse,
    DeviceProtocolError,
    DeviceTimeout,
)
from drivers.transports.backoff import Backoff
from drivers.transports.bus import BusTransport, RetryableError
from drivers.transports.endpoint import Endpoint
from drivers.transports.priority_lock import PriorityLock

# pymodbus logs every timeout and unknown frame at ERROR through its own logger; our typed
# errors and structured logs already say it, once, with the device attached.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

ModbusClient = AsyncModbusTcpClient | AsyncModbusSerialClient
# One write of a sequence: (address, value) is a single-register write (FC 6),
# (address, [values]) a multiple-register write (FC 16).
Write = tuple[int, int | list[int]]
Send = Callable[[ModbusClient], Awaitable[ModbusPDU]]  # one request, asked of the client
Describe = Callable[[], str]  # that request in words, for a log or an error


class ModbusTransport(BusTransport):
    """A Modbus master for one bus (TCP link or RS-485 line)."""

    kind = "modbus"

    def __init__(
        self,
        name: str,
        endpoint: Endpoint,
        *,
        timeout_s: float = 0.25,
        retries: int = 1,
        backoff: Backoff | None = None,
        urgent_link: bool = True,
    ) -> None:
        if endpoint.protocol not in ("modbus-tcp", "modbus-rtu"):
            raise ValueError(f"{name}: {endpoint.protocol} is not a Modbus protocol")
        super().__init__(name, endpoint, timeout_s=timeout_s, retries=retries, backoff=backoff)
        self._client: ModbusClient | None = None
        self._garbage_seen = False
        self._reading = False  # a read is in flight on the main link
        self._wants_urgent_link = urgent_link and endpoint.protocol == "modbus-tcp"
        self._urgent_link: ModbusClient | None = None
        self._urgent_lock = PriorityLock()
        self._urgent_garbage_seen = False
        self._urgent_backoff = Backoff(initial_s=1.0, maximum_s=30.0)
        self._reopening: asyncio.Task[None] | None = None
        self.overtaking_writes = 0  # urgent writes sent over the urgent link

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def urgent_link_wanted(self) -> bool:
        """Whether this bus keeps an urgent link (Modbus TCP, unless turned off)."""
        return self._wants_urgent_link

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _make_client(self, *, urgent: bool = False) -> ModbusClient:
        common = {
            "timeout": self.timeout_s,
            "retries": 0,  # retries are ours, so a retry is also counted and logged here
            "reconnect_delay": 0,  # reconnects are ours too, paced by the backoff
            "trace_packet": self._trace_urgent_packet if urgent else self._trace_packet,
        }
        if self.endpoint.protocol == "modbus-tcp":
            assert self.endpoint.host is not None
            return AsyncModbusTcpClient(
                self.endpoint.host,
                port=self.endpoint.port or 502,
                framer=FramerType.SOCKET,
                **common,  # type: ignore[arg-type]
            )
        if self.endpoint.path is None:
            # RTU framing over a serial device server's TCP socket: pymodbus's TCP client with
            # the RTU framer, rather than pyserial's socket:// handler, which blocks the event
            # loop for 0.3 s whenever it closes.
            assert self.endpoint.host is not None
            return AsyncModbusTcpClient(
                self.endpoint.host,
                port=self.endpoint.port or 502,
                framer=FramerType.RTU,
                **common,  # type: ignore[arg-type]
            )
        return AsyncModbusSerialClient(
            self.endpoint.path,
            framer=FramerType.RTU,
            baudrate=self.endpoint.baudrate,
            **common,  # type: ignore[arg-type]
        )

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        # pymodbus silently discards a frame whose CRC or header is wrong; noting that bytes
        # did arrive lets a timeout be reported as the protocol error it really is.
        if not sending and data:
            self._garbage_seen = True
        return data

    def _trace_urgent_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending and data:
            self._urgent_garbage_seen = True
        return data

    async def _open(self) -> None:
        client = await self._connected_client()
        if client is None:
            raise DeviceDisconnected(
                self.name, f"cannot connect to {self.endpoint.describe()}"
            )
        self._client = client
        if self._wants_urgent_link:
            await self._open_urgent_link()

    async def _open_urgent_link(self) -> None:
        link = await self._connected_client(urgent=True)
        if link is None:
            self._urgent_backoff.failed()
            self._log.warning("modbus.urgent_link_refused", retry_in_s=self._urgent_backoff.delay_s,
                              consequence="urgent writes wait for the request in flight")
            return
        self._urgent_backoff.succeeded()
        self._urgent_link = link

    def _keep_urgent_link(self) -> None:
        """Reopen a lost urgent link in the background (paced), never delaying a poll."""
        if (self._urgent_link is None and self._reopening is None and self._client is not None
                and self._urgent_backoff.ready()):
            self._reopening = asyncio.get_running_loop().create_task(self._reopen())

    async def _reopen(self) -> None:
        try:
            await self._open_urgent_link()
        finally:
            self._reopening = None

    async def _connected_client(self, *, urgent: bool = False) -> ModbusClient | None:
        client = self._make_client(urgent=urgent)
        try:
            ok = await client.connect()
        except (OSError, ModbusException) as exc:
            ok = False
            self._log.debug("modbus.connect_error", error=str(exc), urgent_link=urgent)
        except BaseException:  # cancelled (a dropped link stops the urgent link's reopening)
            client.close()
            raise
        if not ok or not client.connected:
            client.close()
            return None
        return client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._drop_urgent_link()

    def _drop_urgent_link(self) -> None:
        if self._reopening is not None:
            self._reopening.cancel()
            self._reopening = None
        if self._urgent_link is not None:
            self._urgent_link.close()
            self._urgent_link = None

    # -- requests --------------------------------------------------------------------------
    # Each request is a ``send`` (what to ask pymodbus's client) and a ``describe`` (the
    # request in words, built only if a log or an error needs it: most requests succeed).
    async def read_holding(self, unit: int, address: int, count: int) -> list[int]:
        return await self._read(
            lambda c: c.read_holding_registers(address, count=count, device_id=unit),
            lambda: f"read holding {address}+{count} @{unit}",
            count,
        )

    async def read_input(self, unit: int, address: int, count: int) -> list[int]:
        return await self._read(
            lambda c: c.read_input_registers(address, count=count, device_id=unit),
            lambda: f"read input {address}+{count} @{unit}",
            count,
        )

    def _read(self, send: Send, describe: Describe,
              count: int) -> Coroutine[None, None, list[int]]:
        # Marked while in flight: an urgent write may go past a read on the urgent link.
        if self._wants_urgent_link:
            self._keep_urgent_link()
        return self._exclusive(
            lambda: self._attempt(send, describe, count, reading=True), describe)

    async def write_read(self, unit: int, write_address: int, values: list[int],
                         read_address: int, read_count: int) -> list[int]:
        """FC 23: write ``values`` at ``write_address`` and read ``read_count`` holding
        registers from ``read_address`` in one exchange (the device writes first)."""
        return await self._call(
            lambda c: c.readwrite_registers(
                read_address=read_address, read_count=read_count,
                write_address=write_address, values=values, device_id=unit),
            lambda: (f"write {write_address}+{len(values)} and read "
                     f"{read_address}+{read_count} @{unit}"),
            read_count,
        )

    async def write_register(
        self, unit: int, address: int, value: int, *, urgent: bool = False
    ) -> None:
        """FC 6. ``urgent``: ahead of every request queued on the bus."""
        await self._call(*self._single(unit, address, value), None, urgent=urgent)

    async def write_registers(
        self, unit: int, address: int, values: list[int], *, urgent: bool = False
    ) -> None:
        """FC 16. ``urgent``: ahead of every request queued on the bus."""
        await self._call(*self._multiple(unit, address, values), None, urgent=urgent)

    async def write_sequence(
        self, unit: int, writes: Sequence[Write], *, urgent: bool = False
    ) -> None:
        """Several writes to one unit back to back, holding the bus between them (no queued
        request slips in between, e.g. a drive's setpoints and then its start). Each write
        has its own timeout and retries; the first failure ends the sequence."""
        async with self._lock.hold(urgent=urgent):
            for address, value in writes:
                send, describe = (
                    self._single(unit, address, value)
                    if isinstance(value, int)
                    else self._multiple(unit, address, value)
                )
                await self._request(
                    functools.partial(self._attempt, send, describe, None), describe)

    @staticmethod
    def _single(unit: int, address: int, value: int) -> tuple[Send, Describe]:
        return (
            lambda c: c.write_register(address, value, device_id=unit),
            lambda: f"write {address}={value} @{unit}",
        )

    @staticmethod
    def _multiple(unit: int, address: int, values: list[int]) -> tuple[Send, Describe]:
        return (
            lambda c: c.write_registers(address, values, device_id=unit),
            lambda: f"write {address}+{len(values)} @{unit}",
        )

    def _call(
        self, send: Send, describe: Describe, expect: int | None, *, urgent: bool = False
    ) -> Coroutine[None, None, list[int]]:
        # Not a coroutine itself: the caller awaits _exclusive's, one frame fewer per request.
        if urgent and self._reading and self._urgent_link is not None:
            return self._overtaking(send, describe, expect)
        return self._exclusive(
            lambda: self._attempt(send, describe, expect), describe, urgent=urgent)

    async def _overtaking(self, send: Send, describe: Describe,
                          expect: int | None) -> list[int]:
        """An urgent write past the read in flight, over the urgent link. Its claim on the
        main link, queued with the urgent in their order, holds back whatever would follow the
        read there until this write is answered; urgent writes on the urgent link go one at a
        time, in their order."""
        claim = self._lock.reserve()
        try:
            if claim.done():  # the read ended meanwhile: the main link is ours
                return await self._claimed(claim, send, describe, expect)
            async with self._urgent_lock.hold():
                return await self._attempt_urgent(claim, send, describe, expect)
        finally:
            self._lock.withdraw(claim)

    async def _attempt_urgent(self, claim: asyncio.Future[None], send: Send,
                              describe: Describe, expect: int | None) -> list[int]:
        """One try, no retry: a write the urgent link cannot carry goes on the main link,
        behind the read, as any urgent request would have without this link."""
        link = self._urgent_link
        if link is None or not link.connected:
            self._drop_urgent_link()
            return await self._claimed(claim, send, describe, expect)
        self._urgent_garbage_seen = False
        self.requests += 1
        try:
            response = await send(link)
        except ModbusException as exc:
            self._log.warning("modbus.urgent_link_failed", request=describe(), error=str(exc),
                              garbage=self._urgent_garbage_seen)
            self._drop_urgent_link()
            self.requests -= 1  # it is asked again, on the main link, and counted there
            return await self._claimed(claim, send, describe, expect)
        self.overtaking_writes += 1
        try:
            return self._check(describe, response, expect)
        except Exception:
            self.failures += 1
            raise

    async def _claimed(self, claim: asyncio.Future[None], send: Send, describe: Describe,
                       expect: int | None) -> list[int]:
        """The request on the main link once the claim queued for it is granted: after the
        read in flight, before anything queued."""
        await claim
        return await self._request(lambda: self._attempt(send, describe, expect), describe)

    async def _attempt(self, send: Send, describe: Describe, expect: int | None,
                       *, reading: bool = False) -> list[int]:
        assert self._client is not None
        self._garbage_seen = False
        self._reading = reading
        try:
            response = await send(self._client)
        except ConnectionException as exc:
            self._drop()
            raise DeviceDisconnected(self.name, str(exc)) from exc
        except ModbusIOException as exc:
            if not self.connected:
                self._drop()
                raise DeviceDisconnected(self.name, "link closed during request") from exc
            if self._garbage_seen:
                raise RetryableError(DeviceProtocolError(
                    self.name, describe(), "reply discarded: bad CRC or malformed frame"
                )) from exc
            raise RetryableError(DeviceTimeout(self.name, describe(), self.timeout_s)) from exc
        except ModbusException as exc:
            raise DeviceProtocolError(self.name, describe(), str(exc)) from exc
        finally:
            self._reading = False
        return self._check(describe, response, expect)

    def _check(self, describe: Describe, response: ModbusPDU, expect: int | None) -> list[int]:
        if isinstance(response, ExceptionResponse) or response.isError():
            code = getattr(response, "exception_code", 0)
            raise DeviceExceptionResponse(self.name, describe(), int(code))
        if expect is None:
            return []
        registers = list(response.registers)
        if len(registers) != expect:
            raise DeviceProtocolError(
                self.name, describe(), f"expected {expect} registers, got {len(registers)}"
            )
        return registers
