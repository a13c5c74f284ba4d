"""A simulated Modbus bus: pymodbus servers (TCP, or RTU over TCP) answering for a set of
simulated devices, each at its own unit id.

Device logic lives in ``RegisterDevice`` objects; pymodbus's ``SimDevice.action`` hook hands
them every read and write. Below the Modbus layer, the servers' ``trace_packet`` hook makes the
faults pymodbus's API cannot (silence, a corrupt or torn frame) and keeps the bus silent for
units nobody owns, as a real RS-485 slave stays silent (pymodbus would answer exception 4)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.bus_server import BusServer, SerialWire
from simulators.faults import FaultBoard

# pymodbus logs an ERROR with a traceback for every request to an absent unit; on a shared
# bus that is normal traffic, so its own logger is kept quiet.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

log = structlog.get_logger(__name__)

ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3
DEVICE_FAILURE = 4

READ_HOLDING = 3
READ_INPUT = 4
WRITE_SINGLE = 6
WRITE_MULTIPLE = 16
READ_WRITE_MULTIPLE = 23


@dataclass
class RegisterDevice:
    """Base of a simulated Modbus device: a holding and an input register image.

    Subclasses refresh the input image from their state before reads (``refresh``) and
    validate and apply writes (``on_write``), returning a Modbus exception code to refuse."""

    name: str
    unit: int
    holding_size: int
    input_size: int
    holding: list[int] = field(init=False)
    inputs: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.holding = [0] * self.holding_size
        self.inputs = [0] * self.input_size

    def step(self, dt_s: float, wall_now: float) -> None:
        """Advance the device by dt_s of process time (wall_now for safety timing)."""

    def refresh(self) -> None:
        """Bring the register images up to date with the device state."""

    def on_request(self) -> None:
        """A request addressed to this unit has arrived (read or write; before it is
        handled). A drive's communication watchdog feeds on it."""

    def on_write(self, address: int, values: list[int]) -> int | None:
        """Validate and apply a write to holding registers; return an exception code to refuse."""
        self.holding[address : address + len(values)] = values
        return None

    def read_holding(self, address: int, count: int) -> list[int] | int:
        if address < 0 or address + count > self.holding_size:
            return ILLEGAL_ADDRESS
        self.refresh()
        return self.holding[address : address + count]

    def read_input(self, address: int, count: int) -> list[int] | int:
        if address < 0 or address + count > self.input_size:
            return ILLEGAL_ADDRESS
        self.refresh()
        return self.inputs[address : address + count]

    def write_holding(self, address: int, values: list[int]) -> int | None:
        if address < 0 or address + len(values) > self.holding_size:
            return ILLEGAL_ADDRESS
        return self.on_write(address, list(values))


RequestHook = Callable[[RegisterDevice, int, int, list[int] | list[bool] | None], None]


async def _action(  # noqa: PLR0917 - the signature is pymodbus's SimAction, plus the device
    device: RegisterDevice,
    on_request: RequestHook,
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    """pymodbus hook: route one request to the device and mirror its answer into pymodbus's
    register block, which pymodbus then frames."""
    on_request(device, function_code, address, set_values)
    offset = address - start_address
    result: list[int] | int | None
    if function_code == READ_HOLDING or (function_code == READ_WRITE_MULTIPLE
                                          and set_values is None):
        result = device.read_holding(address, count)  # FC 23's read, after its write
    elif function_code == READ_INPUT:
        result = device.read_input(address, count)
    elif function_code in (WRITE_SINGLE, WRITE_MULTIPLE, READ_WRITE_MULTIPLE) \
            and set_values is not None:
        result = device.write_holding(address, [int(v) for v in set_values])
        if result is None:
            return None
    elif function_code == WRITE_SINGLE:
        # pymodbus reads a single write back (values None) to build its echo; its block
        # already holds the value just written, so the echo is the request, as it must be.
        return None
    else:
        return ExcCodes.ILLEGAL_FUNCTION
    if isinstance(result, int):
        return ExcCodes(result)
    registers[offset : offset + count] = result
    return None


def _sim_device(device: RegisterDevice, on_request: RequestHook) -> SimDevice:
    # Coils and discrete inputs are not used by any of our maps (every device is
    # register-only); pymodbus needs a block per table all the same.
    bits = [SimData(0, count=1, values=False, datatype=DataType.BITS)]
    return SimDevice(
        id=device.unit,
        simdata=(
            bits,
            list(bits),
            [SimData(0, count=max(1, device.holding_size), datatype=DataType.REGISTERS)],
            [SimData(0, count=max(1, device.input_size), datatype=DataType.REGISTERS)],
        ),
        action=partial(_action, device, on_request),
    )


class _WireHandler(ServerRequestHandler):
    """One client connection of a bus. On a serial line (``SerialWire``) a request is booked
    on the line as it arrives and answered at once, and the reply reaches the client once the
    request and then the reply have crossed the line: one timer per exchange, so a loaded
    machine's late timers do not add up. On a TCP link, at once. Either way the bus's frame
    hooks see both, with the time each crossed the line."""

    def __init__(self, owner: _WireServer, bus: ModbusBusServer) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect)
        self._bus = bus
        self._arrived: float | None = None  # when the request being answered arrived

    def callback_data(self, data: bytes, addr: tuple[str, int] | None = None) -> int:
        arrived = time.monotonic()  # before the parse: when the bytes were there
        used: int = super().callback_data(data, addr)
        if self.last_pdu is not None:
            request = bytes(data[:used])
            wire = self._bus.wire
            self._arrived = None if wire is None else wire.reserve(len(request))
            self._bus.frame_in(request, self._arrived or arrived)
        return used

    def send(self, data: bytes, addr: tuple[str, int] | None = None) -> None:
        wire = self._bus.wire
        if not data:
            return  # a silent bus (an absent unit, a cut line) sends nothing
        if wire is None:
            # Stamped before the write: the peer may run (and this process wait for a core)
            # as soon as the bytes are out.
            sent = time.monotonic()
            super().send(data, addr)
            self._bus.frame_out(data, sent)
            return
        arrives = wire.reserve(len(data), ready_at=self._arrived)

        def deliver() -> None:
            super(_WireHandler, self).send(data, addr)
            self._bus.frame_out(data, arrives)

        self.loop.call_later(max(0.0, arrives - time.monotonic()), deliver)


class _WireServer(ModbusTcpServer):
    """pymodbus's TCP server with a ``_WireHandler`` per connection."""

    def __init__(self, bus: ModbusBusServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bus = bus

    def callback_new_connection(self) -> _WireHandler:
        return _WireHandler(self, self._bus)


class ModbusBusServer(BusServer):
    """One bus: a TCP listener speaking Modbus TCP (MBAP) or RTU framing."""

    def __init__(
        self,
        name: str,
        framing: Literal["tcp", "rtu"],
        devices: list[RegisterDevice],
        faults: FaultBoard,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        baudrate: int | None = None,
    ) -> None:
        if not devices:
            raise ValueError(f"bus {name} has no devices")
        units = [d.unit for d in devices]
        if len(set(units)) != len(units):
            raise ValueError(f"bus {name}: duplicate unit ids {units}")
        if any(not 1 <= u <= 247 for u in units):
            raise ValueError(f"bus {name}: unit ids must be 1-247, got {units}")
        self.name = name
        self.framing = framing
        self.devices = {d.unit: d for d in devices}
        self.faults = faults
        self.host = host
        self.port = port
        self._server: ModbusTcpServer | None = None
        self._watch: asyncio.Task[None] | None = None
        self.frames_in = 0
        self.frames_out = 0
        # The last requests the devices saw, in arrival order: (unit, function code, address).
        self.requests_seen: deque[tuple[int, int, int]] = deque(maxlen=256)
        # An RTU line is held to its baud rate (None: served as fast as loopback allows).
        self.wire = SerialWire(baudrate, "modbus-rtu") if baudrate and framing == "rtu" else None
        self.frame_hooks = []
        self._log = log.bind(bus=name)

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def _listen(self) -> None:
        server = _WireServer(
            self,
            [_sim_device(d, self._on_request) for d in self.devices.values()],
            address=(self.host, self.port),
            framer=FramerType.SOCKET if self.framing == "tcp" else FramerType.RTU,
            trace_packet=self._trace_packet,
        )
        await server.serve_forever(background=True)
        sockets = getattr(server.transport, "sockets", None)
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._server = server
        self._log.info("modbus_bus.listening", port=self.port, framing=self.framing)

    async def _close(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    def _device_names(self) -> Iterable[str]:
        return [d.name for d in self.devices.values()]

    def _on_request(
        self,
        device: RegisterDevice,
        function_code: int,
        address: int,
        set_values: list[int] | list[bool] | None,
    ) -> None:
        if function_code in (WRITE_SINGLE, READ_WRITE_MULTIPLE) and set_values is None:
            # pymodbus reading its own block back to build a write's echo, or FC 23's read
            # after its write: one request, already seen
            return
        self.requests_seen.append((device.unit, function_code, address))
        if self.faults.link_fault(device.name) in ("silent", "disconnect"):
            return  # a cut line: the request never reached the device
        device.on_request()

    def frame_in(self, frame: bytes, at: float) -> None:
        self._frame(False, frame, at)

    def frame_out(self, frame: bytes, at: float) -> None:
        self._frame(True, frame, at)

    def _unit_of(self, frame: bytes) -> int | None:
        index = 6 if self.framing == "tcp" else 0
        return frame[index] if len(frame) > index else None

    def _trace_packet(self, sending: bool, frame: bytes) -> bytes:
        if not sending:
            self.frames_in += 1
            return frame
        unit = self._unit_of(frame)
        device = self.devices.get(unit) if unit is not None else None
        if device is None:
            return b""  # nobody on the bus owns this unit: stay silent
        fault = self.faults.link_fault(device.name)
        if fault in ("silent", "disconnect"):
            return b""
        if fault == "corrupt":
            self.frames_out += 1
            return _corrupt(frame, self.framing)
        if fault == "torn":
            self.frames_out += 1
            return frame[: max(1, len(frame) // 2)]
        self.frames_out += 1
        return frame


def _corrupt(frame: bytes, framing: str) -> bytes:
    """Damage a frame the way line noise does: the CRC no longer matches (RTU) or the
    header lies about the length (TCP)."""
    if framing == "rtu":
        return frame[:-1] + bytes([frame[-1] ^ 0xFF])
    damaged = bytearray(frame)
    damaged[5] = (damaged[5] + 3) & 0xFF
    return bytes(damaged)
