"""Modbus TCP and RTU transport on pymodbus's async clients.

One instance per bus. RS-485 is half-duplex, so requests on a bus are serialised by a lock;
a write marked ``urgent`` (the safety reaction's) goes ahead of every request queued on the
bus, after the one in flight (``PriorityLock``); each request has its own timeout and a
bounded number of retries; a dropped link is reconnected on the next request, paced by an
exponential backoff so a dead device never turns into a busy loop. Failures surface as the
typed errors of ``drivers.errors``."""

from __future__ import annotations

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
    ) -> None:
        if endpoint.protocol not in ("modbus-tcp", "modbus-rtu"):
            raise ValueError(f"{name}: {endpoint.protocol} is not a Modbus protocol")
        super().__init__(name, endpoint, timeout_s=timeout_s, retries=retries, backoff=backoff)
        self._client: ModbusClient | None = None
        self._garbage_seen = False

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _make_client(self) -> ModbusClient:
        common = {
            "timeout": self.timeout_s,
            "retries": 0,  # retries are ours, so a retry is also counted and logged here
            "reconnect_delay": 0,  # reconnects are ours too, paced by the backoff
            "trace_packet": self._trace_packet,
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

    async def _open(self) -> None:
        client = self._make_client()
        try:
            ok = await client.connect()
        except (OSError, ModbusException) as exc:
            ok = False
            self._log.debug("modbus.connect_error", error=str(exc))
        if not ok or not client.connected:
            client.close()
            raise DeviceDisconnected(
                self.name, f"cannot connect to {self.endpoint.describe()}"
            )
        self._client = client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- requests --------------------------------------------------------------------------
    # Each request is a ``send`` (what to ask pymodbus's client) and a ``describe`` (the
    # request in words, built only if a log or an error needs it: most requests succeed).
    async def read_holding(self, unit: int, address: int, count: int) -> list[int]:
        return await self._call(
            lambda c: c.read_holding_registers(address, count=count, device_id=unit),
            lambda: f"read holding {address}+{count} @{unit}",
            count,
        )

    async def read_input(self, unit: int, address: int, count: int) -> list[int]:
        return await self._call(
            lambda c: c.read_input_registers(address, count=count, device_id=unit),
            lambda: f"read input {address}+{count} @{unit}",
            count,
        )

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
        return self._exclusive(
            lambda: self._attempt(send, describe, expect), describe, urgent=urgent)

    async def _attempt(self, send: Send, describe: Describe, expect: int | None) -> list[int]:
        assert self._client is not None
        self._garbage_seen = False
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
