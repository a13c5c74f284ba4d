"""Device replies fuzzed at the wire (issue 11): a driver pointed at a server that answers with
garbage (random bytes, torn and truncated frames, a lying length, another transaction or unit,
exception responses, the wrong function, too few registers, NaN floats) raises its typed
DeviceError or returns a finite reading, never another exception; and the very next good reply
is read correctly, so the transport recovers by itself. The corpus is seeded: a failure names
its case and replays."""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable

import pytest

from drivers.codecs import alicat_ascii
from drivers.codecs import alicat_modbus_map as mb
from drivers.codecs.diameter_gauge_ascii import GaugeReading as Gauge
from drivers.codecs.diameter_gauge_ascii import encode_measurement
from drivers.diameter_gauge import DiameterGauge
from drivers.errors import DeviceError
from drivers.mfc import AlicatAsciiMfc, AlicatModbusMfc, MfcReading
from drivers.transports.ascii import AsciiTransport
from drivers.transports.backoff import Backoff
from drivers.transports.endpoint import Endpoint
from drivers.transports.modbus import ModbusTransport
from tests.integration.test_transports import HOST, BareServer, closing
from tests.waiting import eventually

CASES = 40  # per seed; each garbage reply can cost a request timeout
TIMEOUT_S = 0.1
GOOD = mb.Readings(gas_number=8, status=frozenset(), pressure_psia=14.7, temperature_c=25.0,
                   volumetric_slpm=1.5, mass_slpm=1.25)
GOOD_SETPOINT = 5.0


# -- Modbus TCP ---------------------------------------------------------------------------------
def _request_fields(frame: bytes) -> tuple[int, int, int, int, int]:
    """(transaction, unit, function, address, count) of a read request."""
    transaction, _, _, unit, function, address, count = struct.unpack(">HHHBBHH", frame[:12])
    return transaction, unit, function, address, count


def _mbap(transaction: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit) + pdu


def _registers_pdu(function: int, words: list[int]) -> bytes:
    return struct.pack(">BB", function, 2 * len(words)) + b"".join(
        struct.pack(">H", w & 0xFFFF) for w in words)


def good_modbus_reply(frame: bytes) -> bytes:
    transaction, unit, function, address, count = _request_fields(frame)
    words = mb.encode_readings(GOOD) if address == mb.READINGS_START else mb.encode_float(
        GOOD_SETPOINT)
    assert len(words) == count
    return _mbap(transaction, unit, _registers_pdu(function, words))


def garbage_modbus_reply(rng: random.Random, frame: bytes) -> tuple[str, bytes]:
    """One kind of bad answer to a read request, named for the failure message."""
    transaction, unit, function, address, count = _request_fields(frame)
    good = good_modbus_reply(frame)
    kind = rng.choice(["random bytes", "random pdu", "truncated", "exception", "transaction",
                       "unit", "nan floats", "random words", "too few registers",
                       "wrong function", "length lies", "doubled"])
    if kind == "random bytes":
        return kind, rng.randbytes(rng.randint(1, 40))
    if kind == "random pdu":
        return kind, _mbap(transaction, unit, rng.randbytes(rng.randint(1, 30)))
    if kind == "truncated":
        return kind, good[:rng.randint(1, len(good) - 1)]
    if kind == "exception":
        return kind, _mbap(transaction, unit, bytes([function | 0x80, rng.randint(0, 255)]))
    if kind == "transaction":
        return kind, struct.pack(">H", (transaction + rng.randint(1, 0xFFFE)) % 0x10000) + good[2:]
    if kind == "unit":
        return kind, good[:6] + bytes([(unit + rng.randint(1, 254)) % 256]) + good[7:]
    if kind == "nan floats":
        odd = rng.choice([math.nan, math.inf, -math.inf])
        words = [w for _ in range(count // 2 + 1) for w in mb.encode_float(odd)][:count]
        if address == mb.READINGS_START:
            words[0] = GOOD.gas_number
        return kind, _mbap(transaction, unit, _registers_pdu(function, words))
    if kind == "random words":
        words = [rng.randint(0, 0xFFFF) for _ in range(count)]
        return kind, _mbap(transaction, unit, _registers_pdu(function, words))
    if kind == "too few registers":
        words = [rng.randint(0, 0xFFFF) for _ in range(rng.randint(0, count - 1))]
        return kind, _mbap(transaction, unit, _registers_pdu(function, words))
    if kind == "wrong function":
        other = rng.choice([f for f in (1, 2, 3, 4, 5, 6, 15, 16, 43) if f != function])
        return kind, _mbap(transaction, unit, bytes([other]) + good[8:])
    if kind == "length lies":
        length = rng.choice([0, 1, 2, len(good) - 6 + rng.randint(1, 20)])
        return kind, good[:4] + struct.pack(">H", length) + good[6:]
    return kind, good + good  # "doubled": a reply, then the same again unasked


def finite(reading: MfcReading) -> bool:
    return all(math.isfinite(v) for v in (reading.pressure_psia, reading.temperature_c,
                                          reading.volumetric_slpm, reading.mass_slpm,
                                          reading.setpoint_slpm))


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_modbus_garbage_is_a_device_error_and_the_next_reply_reads(seed: int) -> None:
    rng = random.Random(seed)
    garbage_left = 0
    sent: list[str] = []

    async def answer(frame: bytes) -> bytes:
        nonlocal garbage_left
        if garbage_left > 0:
            garbage_left -= 1
            kind, reply = garbage_modbus_reply(rng, frame)
            sent.append(kind)
            return reply
        return good_modbus_reply(frame)

    async with BareServer("mbap", answer) as server:
        endpoint = Endpoint("modbus-tcp", host=HOST, port=server.port)
        transport = ModbusTransport("bus", endpoint, timeout_s=TIMEOUT_S, retries=0,
                                    backoff=Backoff(initial_s=0.001, maximum_s=0.01))
        async with closing(transport):
            mfc = AlicatModbusMfc(transport, 1, name="mfc_sicl4", full_scale_slpm=10, gas_number=8)
            for case in range(CASES):
                garbage_left = rng.randint(1, 2)  # the readings, or the setpoint too
                try:
                    reading = await mfc.read()
                except DeviceError:
                    pass
                else:
                    assert finite(reading), (case, sent[-2:], reading)
                garbage_left = 0
                recovered = await eventually(mfc.read, timeout_s=5,
                                             what=f"a good read after {sent[-2:]}")
                assert (recovered.mass_slpm, recovered.setpoint_slpm) == (
                    GOOD.mass_slpm, GOOD_SETPOINT), (case, sent[-2:])
    assert len(set(sent)) > 6  # the corpus went through most kinds


# -- ASCII (the Alicat MFC and the diameter gauge) ------------------------------------------------
def garbage_line(rng: random.Random, good: bytes) -> tuple[str, bytes]:
    kind = rng.choice(["random bytes", "truncated", "corrupted", "nan", "other unit",
                       "rejection", "extra field", "overlong number", "empty"])
    if kind == "random bytes":
        return kind, rng.randbytes(rng.randint(0, 40)) + b"\r"
    if kind == "truncated":
        return kind, good[:rng.randint(0, len(good) - 2)] + b"\r"
    if kind == "corrupted":
        at = rng.randrange(len(good) - 1)
        return kind, good[:at] + bytes([rng.randint(0, 255)]) + good[at + 1:]
    if kind == "nan":
        return kind, good.replace(b"+", b"nan ", 1).replace(b"42.50", b"nan")
    if kind == "other unit":
        return kind, b"B" + good[1:]
    if kind == "rejection":
        return kind, b"?\r"
    if kind == "extra field":
        return kind, good[:-1] + b" 12.5 MOV XYZ\r"
    if kind == "overlong number":
        return kind, good[:2] + b"9" * 300 + good[2:]
    return kind, b"\r"


Driver = Callable[[AsciiTransport], AlicatAsciiMfc | DiameterGauge]
ALICAT_GOOD = (alicat_ascii.format_data_frame(alicat_ascii.DataFrame(
    "A", 14.7, 25.0, 1.5, 1.25, 5.0, "N2", frozenset())) + "\r").encode()
GAUGE_GOOD = (encode_measurement(Gauge(diameter_mm=42.5, valid=True)) + "\r").encode()


@pytest.mark.parametrize(("name", "good", "make"), [
    ("alicat", ALICAT_GOOD, lambda t: AlicatAsciiMfc(t, "A", name="mfc_o2", full_scale_slpm=200,
                                                  gas_number=11)),
    ("gauge", GAUGE_GOOD, DiameterGauge),
], ids=["alicat-ascii", "diameter-gauge"])
@pytest.mark.parametrize("seed", [1, 2])
async def test_ascii_garbage_is_a_device_error_and_the_next_reply_reads(
    name: str, good: bytes, make: Driver, seed: int
) -> None:
    rng = random.Random(seed)
    garbage = False
    sent: list[str] = []

    async def answer(frame: bytes) -> bytes:
        if garbage:
            kind, reply = garbage_line(rng, good)
            sent.append(kind)
            return reply
        return good

    async with BareServer("line", answer) as server:
        endpoint = Endpoint("ascii", host=HOST, port=server.port)
        transport = AsciiTransport("line", endpoint, timeout_s=TIMEOUT_S, retries=0,
                                   backoff=Backoff(initial_s=0.001, maximum_s=0.01))
        async with closing(transport):
            driver = make(transport)
            expected = await driver.read()
            for case in range(CASES):
                garbage = True
                try:
                    reading = await driver.read()
                except DeviceError:
                    pass
                else:
                    values = [v for v in vars(reading).values() if isinstance(v, float)]
                    assert all(math.isfinite(v) for v in values), (case, sent[-1:], reading)
                garbage = False
                recovered = await eventually(driver.read, timeout_s=5,
                                             what=f"a good read after {sent[-1:]}")
                assert recovered == expected, (case, sent[-1:])
    assert len(set(sent)) > 5
