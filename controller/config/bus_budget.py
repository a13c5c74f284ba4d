"""What a poll plan costs a serial bus, and the refusal of a plan a bus could not carry.

An RS-485 bus carries one frame at a time, each character 10 bits on the wire (8N1: start, 8
data, stop) at the bus's baud rate, and Modbus RTU wants 3.5 silent characters after every
frame. A device's poll costs the frames its driver's ``read()`` exchanges (derived here from
the codecs' own constants, so a changed read changes the figure); a bus's load is the sum over
its devices of poll_hz x that wire time. A bus loaded above its budget (70 % by default:
domain.md keeps room for setpoint writes and a trip's posture) is refused with its name and
the figure. Modbus TCP links have no baud rate and no budget.

This module is pure (no I/O) and imports no controller package: ``controller.config.line``
calls ``budget_refusals`` from its validator, and the simulator's pacing and the benches use
the same figures."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from drivers.codecs import (
    alicat_ascii,
    diameter_gauge_ascii,
    rf_generator_map,
    safety_io_map,
    servo_map,
)
from drivers.codecs import alicat_modbus_map as alicat_mb

CHAR_BITS = 10  # 8N1: a start bit, 8 data bits, a stop bit
RTU_GAP_CHARS = 3.5  # Modbus RTU's silent interval that ends a frame
DEFAULT_BUDGET_FRACTION = 0.70  # domain.md: every bus under 70 %, room for setpoint writes
SERIAL_PROTOCOLS = ("modbus-rtu", "alicat-ascii", "ascii")
ASCII_TERMINATOR_BYTES = 1  # CR

# Modbus RTU framing: unit id, function code, then the PDU, then a 2-byte CRC.
_RTU_HEADER = 2
_RTU_CRC = 2


@dataclass(frozen=True)
class Exchange:
    """One request and its reply, in bytes on the wire."""

    request_bytes: int
    reply_bytes: int


def rtu_read(count: int) -> Exchange:
    """FC 3 / FC 4: address and count out; byte count and the registers back."""
    return Exchange(_RTU_HEADER + 4 + _RTU_CRC, _RTU_HEADER + 1 + 2 * count + _RTU_CRC)


def rtu_write_single() -> Exchange:
    """FC 6: address and value out, the same echoed back."""
    return Exchange(_RTU_HEADER + 4 + _RTU_CRC, _RTU_HEADER + 4 + _RTU_CRC)


def rtu_write_multiple(count: int) -> Exchange:
    """FC 16: address, count, byte count and the registers out; address and count back."""
    return Exchange(_RTU_HEADER + 5 + 2 * count + _RTU_CRC, _RTU_HEADER + 4 + _RTU_CRC)


def rtu_write_read(write_count: int, read_count: int) -> Exchange:
    """FC 23: read address and count, write address, count, byte count and registers out;
    byte count and the registers read back."""
    return Exchange(_RTU_HEADER + 9 + 2 * write_count + _RTU_CRC,
                    _RTU_HEADER + 1 + 2 * read_count + _RTU_CRC)


def ascii_exchange(request: str, reply: str) -> Exchange:
    return Exchange(len(request) + ASCII_TERMINATOR_BYTES, len(reply) + ASCII_TERMINATOR_BYTES)


def gap_chars(protocol: str) -> float:
    """Silent characters a frame ends with: RTU's 3.5; an ASCII line's CR ends its frame."""
    return RTU_GAP_CHARS if protocol == "modbus-rtu" else 0.0


def frame_s(frame_bytes: int, baudrate: int, protocol: str) -> float:
    """Wall seconds a frame holds the bus: its characters, then the gap after it."""
    return (frame_bytes + gap_chars(protocol)) * CHAR_BITS / baudrate


def exchange_s(exchange: Exchange, baudrate: int, protocol: str) -> float:
    return (frame_s(exchange.request_bytes, baudrate, protocol)
            + frame_s(exchange.reply_bytes, baudrate, protocol))


def _widest_alicat_frame(unit: str, gas_label: str) -> str:
    """The poll reply at its widest numbers (status words aside: they come with faults)."""
    return alicat_ascii.format_data_frame(alicat_ascii.DataFrame(
        unit=unit, pressure_psia=-999.99, temperature_c=-999.99, volumetric_slpm=-999.99,
        mass_slpm=-999.99, setpoint_slpm=999.99, gas=gas_label))


def _gauge_reading() -> str:
    return diameter_gauge_ascii.encode_measurement(
        diameter_gauge_ascii.GaugeReading(diameter_mm=-9999.99, valid=True))


def poll_exchanges(kind: str, protocol: str, *, unit: object = None,
                   gas_label: str = "") -> tuple[Exchange, ...]:
    """The exchanges one poll of a device makes: what its driver's ``read()`` sends (and the
    safety I/O's heartbeat, which its poller writes every cycle)."""
    if protocol == "alicat-ascii" and kind == "mfc":
        letter = unit if isinstance(unit, str) else "A"
        return (ascii_exchange(alicat_ascii.poll(letter),
                               _widest_alicat_frame(letter, gas_label)),)
    if protocol == "ascii" and kind == "diameter_gauge":
        return (ascii_exchange(diameter_gauge_ascii.MEASURE, _gauge_reading()),)
    if protocol in ("modbus-rtu", "modbus-tcp"):
        if kind == "mfc":  # the readings block, then the setpoint float
            setpoint_words = len(alicat_mb.encode_float(0.0))
            return (rtu_read(alicat_mb.READINGS_COUNT), rtu_read(setpoint_words))
        if kind == "servo_axis":
            return (rtu_read(servo_map.INPUT_COUNT),)
        if kind == "rf_generator":
            return (rtu_read(rf_generator_map.IR_SETPOINT_ACTUAL + 1),)
        if kind == "safety_io":  # the beat and the inputs in one FC 23 exchange
            return (rtu_write_read(safety_io_map.BEAT_COUNT, safety_io_map.INPUT_COUNT),)
    raise ValueError(f"no poll frames known for a {kind} on {protocol}")


class BusPlan(Protocol):
    @property
    def protocol(self) -> str: ...
    @property
    def baudrate(self) -> int: ...
    @property
    def budget_fraction(self) -> float: ...


class PolledDevice(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def bus(self) -> str: ...
    @property
    def poll_hz(self) -> float: ...


def device_poll_s(device: PolledDevice, bus: BusPlan) -> float:
    """Wall seconds of bus time one poll of the device takes."""
    exchanges = poll_exchanges(
        device.kind, bus.protocol, unit=getattr(device, "unit", None),
        gas_label=_gas_label(device))
    return sum(exchange_s(e, bus.baudrate, bus.protocol) for e in exchanges)


def _gas_label(device: PolledDevice) -> str:
    number = getattr(device, "gas_number", None)
    if number is None:
        return ""
    return alicat_ascii.gas_label(number, (number, str(getattr(device, "gas", ""))))


def bus_load(bus_name: str, bus: BusPlan, devices: Iterable[PolledDevice]) -> float:
    """The fraction of the bus's time its poll plan uses (0 for a link with no baud rate)."""
    if bus.protocol not in SERIAL_PROTOCOLS:
        return 0.0
    return sum(d.poll_hz * device_poll_s(d, bus) for d in devices if d.bus == bus_name)


def budget_refusals(buses: Mapping[str, BusPlan],
                    devices: Iterable[PolledDevice]) -> list[str]:
    """One message per serial bus whose poll plan exceeds its budget, naming the bus and the
    figure: ``gas_bus: poll plan uses 82 % of 19200 baud, budget 70 %``."""
    polled = list(devices)
    refusals = []
    for name, bus in buses.items():
        load = bus_load(name, bus, polled)
        if load > bus.budget_fraction:
            refusals.append(f"{name}: poll plan uses {load * 100:.0f} % of {bus.baudrate} "
                            f"baud, budget {bus.budget_fraction * 100:.0f} %")
    return refusals
