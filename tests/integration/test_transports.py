"""The Modbus and ASCII transports' error model against bare asyncio servers written here
(no simulator, no pymodbus server): silence -> DeviceTimeout after every retry, a closed link
-> DeviceDisconnected, a refused connection -> DeviceDisconnected paced by the backoff,
garbage -> DeviceProtocolError, and one outstanding request at a time per bus."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

import pytest

from drivers.errors import DeviceDisconnected, DeviceProtocolError, DeviceTimeout
from drivers.transports.ascii import AsciiTransport
from drivers.transports.backoff import Backoff
from drivers.transports.endpoint import Endpoint
from drivers.transports.modbus import ModbusTransport

HOST = "127.0.0.1"
TIMEOUT_S = 0.1
Framing = Literal["mbap", "rtu", "line"]
Transport = ModbusTransport | AsciiTransport


class Close:
    """A behaviour's answer meaning: drop the connection instead of replying."""


CLOSE = Close()
Behaviour = Callable[[bytes], Awaitable[bytes | Close | None]]


class BareServer:
    """A TCP server that splits the byte stream into request frames, counts them, tracks how
    many are outstanding at once, and answers each as its behaviour says."""

    def __init__(self, framing: Framing, behaviour: Behaviour, port: int = 0) -> None:
        self.framing = framing
        self.behaviour = behaviour
        self.port = port
        self.requests: list[bytes] = []
        self.connections = 0
        self.outstanding = 0
        self.max_outstanding = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> BareServer:
        self._server = await asyncio.start_server(self._serve, HOST, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes:
        if self.framing == "mbap":
            header = await reader.readexactly(6)
            (length,) = struct.unpack(">H", header[4:6])
            return header + await reader.readexactly(length)
        if self.framing == "rtu":
            return await reader.readexactly(8)  # every read/write-single request is 8 bytes
        return await reader.readuntil(b"\r")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            while True:
                frame = await self._read_frame(reader)
                self.requests.append(frame)
                self.outstanding += 1
                self.max_outstanding = max(self.max_outstanding, self.outstanding)
                try:
                    reply = await self.behaviour(frame)
                finally:
                    self.outstanding -= 1
                if isinstance(reply, Close):
                    return
                if reply:
                    writer.write(reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self._handlers.discard(task)
            writer.close()


# -- behaviours --------------------------------------------------------------------------------
async def never_answer(frame: bytes) -> None:
    return None


async def close_link(frame: bytes) -> Close:
    return CLOSE


def mbap_read_reply(frame: bytes) -> bytes:
    """A valid Modbus TCP reply to a read of one register: the register holds its address."""
    transaction, _, _, unit, function, address, count = struct.unpack(">HHHBBHH", frame[:12])
    assert count == 1
    pdu = struct.pack(">BBH", function, 2, address)
    return struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit) + pdu


async def slow_register_echo(frame: bytes) -> bytes:
    await asyncio.sleep(0.005)  # long enough for a second request to overlap, were it sent
    return mbap_read_reply(frame)


async def slow_line_echo(frame: bytes) -> bytes:
    await asyncio.sleep(0.005)
    return b"echo " + frame


def garbage(reply: bytes) -> Behaviour:
    async def answer(frame: bytes) -> bytes:
        return reply

    return answer


# -- fixtures ----------------------------------------------------------------------------------
def modbus(port: int, *, rtu: bool = False, retries: int = 1,
           backoff: Backoff | None = None) -> ModbusTransport:
    endpoint = Endpoint("modbus-rtu" if rtu else "modbus-tcp", host=HOST, port=port)
    return ModbusTransport("bus", endpoint, timeout_s=TIMEOUT_S, retries=retries, backoff=backoff)


def ascii_line(port: int, *, retries: int = 1, backoff: Backoff | None = None) -> AsciiTransport:
    endpoint = Endpoint("ascii", host=HOST, port=port)
    return AsciiTransport("line", endpoint, timeout_s=TIMEOUT_S, retries=retries, backoff=backoff)


async def modbus_read(transport: Transport) -> list[int]:
    assert isinstance(transport, ModbusTransport)
    return await transport.read_holding(1, 7, 1)


async def ascii_request(transport: Transport) -> str:
    assert isinstance(transport, AsciiTransport)
    return await transport.request("A")


@contextlib.asynccontextmanager
async def closing(transport: Transport) -> AsyncIterator[Transport]:
    try:
        yield transport
    finally:
        await transport.close()


async def free_port() -> int:
    """A port nobody listens on: bound by a server that is closed again at once."""
    async with BareServer("line", never_answer) as server:
        return server.port


# -- timeouts ----------------------------------------------------------------------------------
@pytest.mark.parametrize("retries", [0, 2])
async def test_modbus_silence_is_a_timeout_after_every_retry(retries: int) -> None:
    async with (
        BareServer("mbap", never_answer) as server,
        closing(modbus(server.port, retries=retries)) as transport,
    ):
        with pytest.raises(DeviceTimeout) as caught:
            await modbus_read(transport)
    assert len(server.requests) == retries + 1
    assert caught.value.device == "bus"
    assert caught.value.timeout_s == TIMEOUT_S
    assert "read holding 7+1 @1" in caught.value.request
    # Every attempt is the same request: function 3, address 7, one register, unit 1.
    assert {frame[6:] for frame in server.requests} == {bytes.fromhex("01 03 0007 0001")}


@pytest.mark.parametrize("retries", [0, 2])
async def test_ascii_silence_is_a_timeout_after_every_retry(retries: int) -> None:
    async with (
        BareServer("line", never_answer) as server,
        closing(ascii_line(server.port, retries=retries)) as transport,
    ):
        with pytest.raises(DeviceTimeout) as caught:
            await ascii_request(transport)
    assert server.requests == [b"A\r"] * (retries + 1)
    assert caught.value.request == "'A'"


async def test_ascii_timeout_counts_from_the_request_after_many_quick_ones() -> None:
    # One reply timer stands for many requests (the deadline moves on with each): a request
    # that goes unanswered after a run of quick ones still waits its whole timeout.
    answered = 0

    async def answer_then_fall_silent(frame: bytes) -> bytes | None:
        nonlocal answered
        if frame == b"quiet\r":
            return None
        answered += 1
        return b"ok\r"

    async with (
        BareServer("line", answer_then_fall_silent) as server,
        closing(ascii_line(server.port, retries=0)) as transport,
    ):
        assert isinstance(transport, AsciiTransport)
        loop = asyncio.get_running_loop()
        end = loop.time() + TIMEOUT_S * 0.8  # most of a timeout's worth of quick requests
        while loop.time() < end:
            assert await transport.request("A") == "ok"
        started = loop.time()
        with pytest.raises(DeviceTimeout):
            await transport.request("quiet")
        waited = loop.time() - started
        assert await transport.request("A") == "ok"  # and the next one is answered again
    assert answered > 2
    assert TIMEOUT_S * 0.99 <= waited < TIMEOUT_S * 5


# -- disconnects -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("framing", "make", "call"),
    [("mbap", modbus, modbus_read), ("line", ascii_line, ascii_request)],
    ids=["modbus", "ascii"],
)
async def test_a_closed_link_is_disconnected(
    framing: Framing,
    make: Callable[[int], Transport],
    call: Callable[[Transport], Awaitable[object]],
) -> None:
    async with (
        BareServer(framing, close_link) as server,
        closing(make(server.port)) as transport,
    ):
        with pytest.raises(DeviceDisconnected):
            await call(transport)
        assert not transport.connected
    assert len(server.requests) == 1  # a dead link is reported, not retried into the void


@pytest.mark.parametrize(
    ("framing", "make", "call"),
    [("mbap", modbus, modbus_read), ("line", ascii_line, ascii_request)],
    ids=["modbus", "ascii"],
)
async def test_refused_connection_then_backoff(
    framing: Framing,
    make: Callable[..., Transport],
    call: Callable[[Transport], Awaitable[object]],
) -> None:
    port = await free_port()
    # A long first delay makes "immediately" certain even on a slow machine.
    async with closing(make(port, backoff=Backoff(initial_s=60.0))) as transport:
        with pytest.raises(DeviceDisconnected) as first:
            await call(transport)
        assert "backoff" not in first.value.reason
        async with BareServer(framing, never_answer, port=port) as server:
            with pytest.raises(DeviceDisconnected) as second:
                await call(transport)
            assert "backoff" in second.value.reason
            assert server.connections == 0  # the backoff held the attempt back


async def test_reconnects_once_the_backoff_allows() -> None:
    port = await free_port()
    async with closing(modbus(port, backoff=Backoff(initial_s=0.01, maximum_s=0.01))) as transport:
        with pytest.raises(DeviceDisconnected):
            await modbus_read(transport)
        async with BareServer("mbap", slow_register_echo, port=port) as server:
            end = asyncio.get_running_loop().time() + 10
            while True:
                try:
                    assert await modbus_read(transport) == [7]
                    break
                except DeviceDisconnected:
                    assert asyncio.get_running_loop().time() < end
                    await asyncio.sleep(0.01)
            assert server.connections == 2  # the link and its urgent link


# -- garbage -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("framing", "reply", "rtu"),
    [
        ("mbap", b"\x00\x01garbage!\r\n", False),  # not a Modbus frame at all
        ("rtu", bytes.fromhex("01 03 02 00 07 00 00"), True),  # right shape, wrong CRC
    ],
    ids=["modbus-tcp", "modbus-rtu-bad-crc"],
)
async def test_modbus_garbage_is_a_protocol_error(
    framing: Framing, reply: bytes, rtu: bool
) -> None:
    async with (
        BareServer(framing, garbage(reply)) as server,
        closing(modbus(server.port, rtu=rtu, retries=1)) as transport,
    ):
        with pytest.raises(DeviceProtocolError) as caught:
            await modbus_read(transport)
    assert "bad CRC or malformed" in caught.value.detail
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        (b"\xff\xfe\x80\r", "non-ASCII"),
        (b"no terminator here", "unterminated"),
        (b"x" * 600, "unterminated"),  # a runaway stream, longer than any frame
    ],
)
async def test_ascii_garbage_is_a_protocol_error(reply: bytes, detail: str) -> None:
    async with (
        BareServer("line", garbage(reply)) as server,
        closing(ascii_line(server.port, retries=0)) as transport,
    ):
        with pytest.raises(DeviceProtocolError) as caught:
            await ascii_request(transport)
    assert detail in caught.value.detail


async def test_ascii_recovers_after_garbage() -> None:
    replies = iter([b"\xff\r", b"A +014.70\r"])

    async def answer(frame: bytes) -> bytes:
        return next(replies)

    async with (
        BareServer("line", answer) as server,
        closing(ascii_line(server.port)) as transport,
    ):
        with pytest.raises(DeviceProtocolError):
            await ascii_request(transport)
        assert await ascii_request(transport) == "A +014.70"


# -- one request at a time ---------------------------------------------------------------------
async def test_modbus_requests_are_serialised() -> None:
    async with (
        BareServer("mbap", slow_register_echo) as server,
        closing(modbus(server.port)) as transport,
    ):
        assert isinstance(transport, ModbusTransport)
        results = await asyncio.gather(
            *(transport.read_holding(1, address, 1) for address in range(20))
        )
    assert results == [[address] for address in range(20)]
    assert len(server.requests) == 20
    assert server.max_outstanding == 1


async def test_ascii_requests_are_serialised() -> None:
    async with (
        BareServer("line", slow_line_echo) as server,
        closing(ascii_line(server.port)) as transport,
    ):
        assert isinstance(transport, AsciiTransport)
        lines = [f"U{n}" for n in range(20)]
        replies = await asyncio.gather(*(transport.request(line) for line in lines))
    assert replies == [f"echo {line}" for line in lines]
    assert server.max_outstanding == 1


# -- urgent requests ---------------------------------------------------------------------------
async def slow_modbus(frame: bytes) -> bytes:
    """Reads answer their address (see mbap_read_reply); a write single is echoed."""
    await asyncio.sleep(0.005)
    if frame[7] == 6:
        return frame
    return mbap_read_reply(frame)


async def _until_queued(transport: Transport, count: int) -> None:
    for _ in range(200):
        if transport.queued == count:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{transport.queued} queued, expected {count}")


def _modbus_requests(server: BareServer) -> list[tuple[int, int]]:
    """(function code, address) of each request frame, in arrival order."""
    return [(frame[7], struct.unpack(">H", frame[8:10])[0]) for frame in server.requests]


@pytest.mark.parametrize("urgent", [True, False])
async def test_modbus_urgent_write_goes_right_after_the_request_in_flight(urgent: bool) -> None:
    """On a line with one master (no urgent link): after the request in flight, first."""
    polls = 8
    async with (
        BareServer("mbap", slow_modbus) as server,
        closing(ModbusTransport("bus", Endpoint("modbus-tcp", host=HOST, port=server.port),
                                timeout_s=TIMEOUT_S, urgent_link=False)) as transport,
    ):
        assert isinstance(transport, ModbusTransport)
        await transport.connect()
        tasks = [
            asyncio.create_task(transport.read_holding(1, address, 1)) for address in range(polls)
        ]
        await _until_queued(transport, polls - 1)  # poll 0 in flight, the rest queued
        await transport.write_register(1, 100, 0, urgent=urgent)
        await asyncio.gather(*tasks)
    seen = _modbus_requests(server)
    reads = [(3, address) for address in range(polls)]
    if urgent:
        assert seen == [reads[0], (6, 100), *reads[1:]]
    else:
        assert seen == [*reads, (6, 100)]  # an ordinary write waits its turn
    assert server.max_outstanding == 1


async def test_modbus_urgent_requests_keep_their_own_order() -> None:
    async with (
        BareServer("mbap", slow_modbus) as server,
        closing(modbus(server.port)) as transport,
    ):
        assert isinstance(transport, ModbusTransport)
        await transport.connect()
        tasks = [asyncio.create_task(transport.read_holding(1, a, 1)) for a in range(4)]
        await _until_queued(transport, 3)
        urgent = [
            asyncio.create_task(transport.write_register(1, 100 + n, 0, urgent=True))
            for n in range(3)
        ]
        await _until_queued(transport, 6)
        await asyncio.gather(*tasks, *urgent)
    assert _modbus_requests(server) == [
        (3, 0), (6, 100), (6, 101), (6, 102), (3, 1), (3, 2), (3, 3),
    ]


async def test_ascii_urgent_request_goes_right_after_the_one_in_flight() -> None:
    async with (
        BareServer("line", slow_line_echo) as server,
        closing(ascii_line(server.port)) as transport,
    ):
        assert isinstance(transport, AsciiTransport)
        await transport.connect()
        tasks = [asyncio.create_task(transport.request(f"A{n}")) for n in range(6)]
        await _until_queued(transport, 5)
        assert await transport.request("BS0.00", urgent=True) == "echo BS0.00"
        await asyncio.gather(*tasks)
    assert server.requests == [
        b"A0\r", b"BS0.00\r", b"A1\r", b"A2\r", b"A3\r", b"A4\r", b"A5\r",
    ]


# -- the urgent link (Modbus TCP) ---------------------------------------------------------------
class Gated:
    """Reads wait for ``reads`` and writes to register 100 for ``urgent`` before their answer;
    the other writes for ``writes``. Every request's arrival is in ``server.requests``."""

    def __init__(self) -> None:
        self.reads, self.writes, self.urgent = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self.urgent.set()

    async def __call__(self, frame: bytes) -> bytes:
        if frame[7] == 6:
            (address,) = struct.unpack(">H", frame[8:10])
            await (self.urgent if address == 100 else self.writes).wait()
            return frame
        await self.reads.wait()
        return mbap_read_reply(frame)


async def _until_requests(server: BareServer, count: int) -> None:
    for _ in range(2000):
        if len(server.requests) >= count:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{_modbus_requests(server)}: expected {count} requests")


def _tcp(port: int, *, timeout_s: float = 1.0) -> ModbusTransport:
    return ModbusTransport("bus", Endpoint("modbus-tcp", host=HOST, port=port),
                           timeout_s=timeout_s, retries=0)


async def test_modbus_tcp_urgent_write_passes_a_read_in_flight() -> None:
    gate = Gated()
    async with BareServer("mbap", gate) as server, closing(_tcp(server.port)) as transport:
        assert isinstance(transport, ModbusTransport)
        await transport.connect()
        assert server.connections == 2  # the link and its urgent link, opened together
        reads = [asyncio.create_task(transport.read_holding(1, a, 1)) for a in range(3)]
        await _until_requests(server, 1)  # read 0 in flight, unanswered; 1 and 2 queued
        await transport.write_register(1, 100, 0, urgent=True)  # answered meanwhile
        assert not any(read.done() for read in reads)
        assert server.outstanding == 1 and transport.overtaking_writes == 1
        gate.reads.set()
        assert [await read for read in reads] == [[0], [1], [2]]
    assert _modbus_requests(server) == [(3, 0), (6, 100), (3, 1), (3, 2)]


async def test_what_follows_the_read_waits_for_the_urgent_write_answer() -> None:
    """Its claim on the main link, queued as it starts: the read's successors (queued before
    it) go out only once the urgent write is answered, so it stays ahead of them."""
    gate = Gated()
    gate.urgent.clear()
    async with BareServer("mbap", gate) as server, closing(_tcp(server.port)) as transport:
        assert isinstance(transport, ModbusTransport)
        await transport.connect()
        first = asyncio.create_task(transport.read_holding(1, 0, 1))
        await _until_requests(server, 1)
        queued = asyncio.create_task(transport.write_register(1, 50, 5))
        await _until_queued(transport, 1)
        urgent = asyncio.create_task(transport.write_register(1, 100, 0, urgent=True))
        await _until_requests(server, 2)
        gate.reads.set()
        gate.writes.set()
        assert await first == [0]
        await asyncio.sleep(0.05)  # time enough for the queued write, were it let through
        assert _modbus_requests(server) == [(3, 0), (6, 100)]
        gate.urgent.set()
        await urgent
        await queued
    assert _modbus_requests(server) == [(3, 0), (6, 100), (6, 50)]


async def test_an_urgent_write_waits_for_a_write_in_flight() -> None:
    """Two writes on two connections could reach the device in either order: never."""
    gate = Gated()
    async with BareServer("mbap", gate) as server, closing(_tcp(server.port)) as transport:
        assert isinstance(transport, ModbusTransport)
        await transport.connect()
        ordinary = asyncio.create_task(transport.write_register(1, 50, 5))
        await _until_requests(server, 1)
        urgent = asyncio.create_task(transport.write_register(1, 100, 0, urgent=True))
        await asyncio.sleep(0.05)
        assert _modbus_requests(server) == [(6, 50)]
        gate.writes.set()
        await asyncio.gather(ordinary, urgent)
    assert _modbus_requests(server) == [(6, 50), (6, 100)]
    assert server.max_outstanding == 1 and transport.overtaking_writes == 0


async def test_urgent_link_closed_by_the_device_falls_back_to_the_main_link() -> None:
    """A device that takes one connection (it closes the second at its first request): the
    write is asked again on the main link, after the read, and nothing is lost."""
    closed: list[bytes] = []

    async def one_connection(frame: bytes) -> bytes | Close:
        if frame[7] == 6 and not closed:  # the first write: the one on the urgent link
            closed.append(frame)
            return CLOSE
        await asyncio.sleep(0.02)
        return frame if frame[7] == 6 else mbap_read_reply(frame)

    async with BareServer("mbap", one_connection) as server, \
            closing(_tcp(server.port)) as transport:
        assert isinstance(transport, ModbusTransport)
        await transport.connect()
        read = asyncio.create_task(transport.read_holding(1, 3, 1))
        await _until_requests(server, 1)
        await transport.write_register(1, 100, 0, urgent=True)
        assert await read == [3]
        assert transport.overtaking_writes == 0
    assert _modbus_requests(server) == [(3, 3), (6, 100), (6, 100)]


@pytest.mark.parametrize("rtu", [True, False], ids=["rtu-through-a-device-server", "tcp-off"])
async def test_no_urgent_link_on_one_master_lines_or_when_turned_off(rtu: bool) -> None:
    async with BareServer("rtu" if rtu else "mbap", never_answer) as server:
        transport = ModbusTransport(
            "bus", Endpoint("modbus-rtu" if rtu else "modbus-tcp", host=HOST, port=server.port),
            timeout_s=TIMEOUT_S, urgent_link=rtu)  # rtu: asked for, and still none
        async with closing(transport):
            await transport.connect()
            await asyncio.sleep(0.02)
            assert server.connections == 1
