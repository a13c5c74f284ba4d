"""The RF generator driver against its simulator over real loopback Modbus TCP.

The simulator is stepped explicitly (process time), never by sleeping; only the link-fault
tests wait, and they poll for the outcome with a generous deadline."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from controller.config.line import RfGeneratorConfig, load_line_config
from drivers.codecs import rf_generator_map as rf_map
from drivers.codecs import safety_io_map as io_map
from drivers.errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceExceptionResponse,
    DeviceProtocolError,
    DeviceRangeError,
    DeviceTimeout,
)
from drivers.rf_generator import RfGenerator, RfStatus
from drivers.transports.endpoint import Endpoint
from drivers.transports.modbus import ModbusTransport
from simulators.faults import FaultBoard
from simulators.modbus_bus import ModbusBusServer
from simulators.plant import Plant
from simulators.rf_generator import RfGeneratorSim
from simulators.safety_io import SafetyIoSim
from tests.waiting import answered, eventually, first_failure

T = TypeVar("T")


@dataclass
class Rig:
    config: RfGeneratorConfig
    faults: FaultBoard
    plant: Plant
    sim: RfGeneratorSim
    bus: ModbusBusServer
    transport: ModbusTransport
    rf: RfGenerator

    def run(self, seconds: float, dt_s: float = 0.05) -> None:
        """Advance the simulator and the plant by `seconds` of process time."""
        for _ in range(round(seconds / dt_s)):
            self.sim.step(dt_s, 0.0)
            self.plant.step(dt_s)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    line = load_line_config()
    config = line.rf()
    faults = FaultBoard()
    plant = Plant.from_line(line, faults)
    sim = RfGeneratorSim("rf", config, plant, faults)
    bus = ModbusBusServer("rf_link", "tcp", [sim], faults)
    await bus.start()
    transport = ModbusTransport(
        "rf_link", Endpoint("modbus-tcp", host="127.0.0.1", port=bus.port), timeout_s=0.2
    )
    rf = RfGenerator(
        transport,
        config.unit,
        max_power_kw=config.max_power_kw,
        max_slew_kw_s=config.max_slew_kw_s,
    )
    try:
        yield Rig(config, faults, plant, sim, bus, transport, rf)
    finally:
        await transport.close()
        await bus.stop()




async def _first_error(rig: Rig) -> DeviceError:
    """Poll until a read fails (a fault takes effect on the next frame) and return the error."""
    return await first_failure(rig.rf.read, what="a read to fail")


# -- behaviour -------------------------------------------------------------------------------
async def test_idle_generator_reports_ready_and_off(rig: Rig) -> None:
    status = await rig.rf.read()
    assert status == RfStatus(
        forward_kw=0.0, reflected_kw=0.0, setpoint_kw=0.0, ready=True, rf_on=False,
        plasma_lit=False, interlock_open=False, fault=False, fault_code=0, ramping=False,
    )
    assert await rig.rf.read_frequency_mhz() == pytest.approx(rig.config.frequency_mhz)


async def test_on_then_off(rig: Rig) -> None:
    await rig.rf.set_power_kw(12.0)
    await rig.rf.rf_on()
    rig.run(5.0)
    status = await rig.rf.read()
    assert status.rf_on
    assert status.ready
    assert not status.ramping
    assert status.forward_kw == pytest.approx(12.0)
    assert status.setpoint_kw == pytest.approx(12.0)
    assert status.reflected_kw == pytest.approx(12.0 * rig.plant.reflected_fraction, abs=0.05)
    assert rig.plant.rf_on
    assert rig.plant.rf_forward_kw == pytest.approx(12.0)

    await rig.rf.rf_off()
    rig.run(0.05)
    status = await rig.rf.read()
    assert not status.rf_on
    assert status.forward_kw == 0.0
    assert not rig.plant.rf_on
    assert rig.plant.rf_forward_kw == 0.0


async def test_plasma_lit_is_reported_from_the_plant(rig: Rig) -> None:
    rig.plant.gas_flow_slpm["mfc_ar"] = 30.0
    await rig.rf.set_power_kw(12.0)
    await rig.rf.rf_on()
    rig.run(4.0)
    assert (await rig.rf.read()).plasma_lit


async def test_power_slews_at_the_commanded_ramp(rig: Rig) -> None:
    await rig.rf.set_ramp_kw_s(2.0)
    await rig.rf.set_power_kw(50.0)
    await rig.rf.rf_on()
    rig.run(1.0)
    status = await rig.rf.read()
    assert status.forward_kw == pytest.approx(2.0)
    assert status.ramping
    assert status.setpoint_kw == pytest.approx(50.0)


async def test_ramp_is_capped_by_the_generators_max_slew(rig: Rig) -> None:
    # Another master may write any ramp the register holds; the generator caps it.
    await rig.transport.write_register(
        rig.config.unit, rf_map.HR_RAMP_RATE, rf_map.encode_ramp_kw_s(100.0)
    )
    await rig.rf.set_power_kw(50.0)
    await rig.rf.rf_on()
    rig.run(1.0)
    assert (await rig.rf.read()).forward_kw == pytest.approx(rig.config.max_slew_kw_s)
    rig.run(20.0)
    status = await rig.rf.read()
    assert status.forward_kw == pytest.approx(50.0)
    assert not status.ramping

    await rig.rf.set_power_kw(45.0)  # down-ramps are slew-limited too
    rig.run(0.5)
    assert (await rig.rf.read()).forward_kw == pytest.approx(50.0 - rig.config.max_slew_kw_s / 2)


async def test_fault_latches_until_reset_after_it_clears(rig: Rig) -> None:
    await rig.rf.set_power_kw(20.0)
    await rig.rf.rf_on()
    rig.run(2.0)
    rig.faults.inject("rf", "rf_fault")
    rig.run(0.05)
    status = await rig.rf.read()
    assert status.fault
    assert status.fault_code == rf_map.FAULT_INTERNAL
    assert not status.rf_on
    assert not status.ready
    assert status.forward_kw == 0.0
    assert not rig.plant.rf_on

    with pytest.raises(DeviceExceptionResponse) as refused:
        await rig.rf.rf_on()
    assert refused.value.exception_code == 4

    await rig.rf.reset_fault()  # the cause is still there: stays latched
    rig.run(0.05)
    assert (await rig.rf.read()).fault

    rig.faults.clear("rf", "rf_fault")
    rig.run(0.05)
    assert (await rig.rf.read()).fault_code == rf_map.FAULT_INTERNAL  # latched
    await rig.rf.reset_fault()
    rig.run(1.0)
    status = await rig.rf.read()
    assert not status.fault
    assert status.fault_code == 0
    assert status.ready
    assert not status.rf_on, "RF must not come back by itself after a reset"


async def test_fault_code_from_fault_params(rig: Rig) -> None:
    rig.faults.inject("rf", "rf_fault", params={"code": 42})
    rig.run(0.05)
    assert (await rig.rf.read()).fault_code == 42


async def test_rf_enable_lost_switches_rf_off_for_good(rig: Rig) -> None:
    await rig.rf.set_power_kw(20.0)
    await rig.rf.rf_on()
    rig.run(2.0)
    rig.plant.rf_enable = False
    rig.run(0.05)
    status = await rig.rf.read()
    assert status.interlock_open
    assert not status.rf_on
    assert not status.ready
    assert not status.fault  # an open interlock is not a generator fault
    assert rig.plant.rf_forward_kw == 0.0

    with pytest.raises(DeviceExceptionResponse) as refused:
        await rig.rf.rf_on()
    assert refused.value.exception_code == 4

    rig.plant.rf_enable = True
    rig.run(1.0)
    status = await rig.rf.read()
    assert status.ready
    assert not status.interlock_open
    assert not status.rf_on, "the on-command was cleared: RF stays off until commanded"


async def test_safety_plc_heartbeat_loss_drops_rf(rig: Rig) -> None:
    line = load_line_config()
    plc = SafetyIoSim("safety_io", line.safety_io(), rig.plant, rig.faults)
    plc.on_write(0, [0x0100])  # the controller's RF permit (outputs bit 8)
    plc.on_write(io_map.HR_BEAT_OWNER, [0x1A2B, 1])  # a first heartbeat: owner id, counter
    plc.step(0.05, 100.0)
    await rig.rf.set_power_kw(20.0)
    await rig.rf.rf_on()
    rig.run(1.0)
    assert (await rig.rf.read()).rf_on

    plc.step(0.05, 100.0 + line.safety_io().heartbeat_timeout_s)  # no beat since: lost
    rig.run(0.05)
    status = await rig.rf.read()
    assert status.interlock_open
    assert not status.rf_on


async def test_stuck_and_drift_apply_to_the_readings(rig: Rig) -> None:
    await rig.rf.set_power_kw(20.0)
    await rig.rf.rf_on()
    rig.run(1.0)
    rig.faults.inject("rf", "stuck")
    frozen = (await rig.rf.read()).forward_kw
    rig.run(1.0)
    assert (await rig.rf.read()).forward_kw == frozen
    assert rig.plant.rf_forward_kw > frozen  # the output itself kept ramping
    rig.faults.clear("rf", "stuck")

    rig.run(5.0)
    rig.faults.inject("rf", "drift", params={"offset": 1.5, "channel": "forward_kw"})
    assert (await rig.rf.read()).forward_kw == pytest.approx(21.5)


# -- range checks and exceptions -----------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "value"),
    [
        ("set_power_kw", 80.1),
        ("set_power_kw", -0.1),
        ("set_power_kw", math.nan),
        ("set_ramp_kw_s", 0.0),
        ("set_ramp_kw_s", 0.05),
        ("set_ramp_kw_s", 5.1),
        ("set_ramp_kw_s", math.inf),
    ],
)
async def test_out_of_range_is_refused_before_sending(rig: Rig, call: str, value: float) -> None:
    with pytest.raises(DeviceRangeError) as refused:
        await getattr(rig.rf, call)(value)
    assert refused.value.device == "rf"
    assert rig.transport.requests == 0


async def test_setpoint_above_max_is_an_exception_response(rig: Rig) -> None:
    too_high = rf_map.encode_power_kw(rig.config.max_power_kw) + 1
    with pytest.raises(DeviceExceptionResponse) as refused:
        await rig.transport.write_register(rig.config.unit, rf_map.HR_POWER_SETPOINT, too_high)
    assert refused.value.exception_code == 3
    assert (await rig.rf.read()).setpoint_kw == 0.0


async def test_unknown_register_is_an_exception_response(rig: Rig) -> None:
    with pytest.raises(DeviceExceptionResponse) as refused:
        await rig.transport.read_input(rig.config.unit, rf_map.INPUT_COUNT, 1)
    assert refused.value.exception_code == 2


# -- link faults ---------------------------------------------------------------------------
async def test_silent_link_times_out(rig: Rig) -> None:
    rig.faults.inject("rf", "silent")
    assert isinstance(await _first_error(rig), DeviceTimeout)


async def test_corrupt_reply_is_a_protocol_error(rig: Rig) -> None:
    rig.faults.inject("rf", "corrupt")
    assert isinstance(await _first_error(rig), DeviceProtocolError)


async def test_torn_reply_fails(rig: Rig) -> None:
    rig.faults.inject("rf", "torn")
    assert isinstance(await _first_error(rig), DeviceTimeout | DeviceProtocolError)


async def test_disconnect_then_recovery(rig: Rig) -> None:
    await rig.rf.read()
    rig.faults.inject("rf", "disconnect")
    end = time.monotonic() + 10.0
    error = await _first_error(rig)
    while not isinstance(error, DeviceDisconnected) and time.monotonic() < end:
        error = await _first_error(rig)  # a half-dead socket may time out first
    assert isinstance(error, DeviceDisconnected)

    rig.faults.clear("rf", "disconnect")
    status = await eventually(rig.rf.read, answered)
    assert status.ready
    assert rig.transport.connected


# -- pinned wire bytes ---------------------------------------------------------------------
async def _exchange(rig: Rig, request: bytes, reply_length: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.bus.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(reply_length), 5.0)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_wire_read_forward_power(rig: Rig) -> None:
    rig.sim.forward_kw = 49.3
    # MBAP: transaction 0x0001, protocol 0, length 6, unit 1; PDU: function 4, address 2, count 1.
    request = bytes.fromhex("0001 0000 0006 01 04 0002 0001")
    reply = await _exchange(rig, request, 11)
    assert reply == bytes.fromhex("0001 0000 0005 01 04 02 01ED")  # 493 = 49.3 kW x 10


async def test_wire_write_setpoint_echoes(rig: Rig) -> None:
    request = bytes.fromhex("0002 0000 0006 01 06 0001 01F4")  # HR 1 = 500: 50.0 kW
    assert await _exchange(rig, request, 12) == request
    assert rig.sim.setpoint_kw == pytest.approx(50.0)


async def test_wire_setpoint_above_max_is_exception_3(rig: Rig) -> None:
    request = bytes.fromhex("0003 0000 0006 01 06 0001 0321")  # 801: 80.1 kW
    assert await _exchange(rig, request, 9) == bytes.fromhex("0003 0000 0003 01 86 03")


async def test_wire_read_status_block(rig: Rig) -> None:
    request = bytes.fromhex("0004 0000 0006 01 04 0000 0006")
    reply = await _exchange(rig, request, 21)
    # ready only; no fault; 0 kW forward, reflected, setpoint; 3000 kHz.
    assert reply == bytes.fromhex("0004 0000 000F 01 04 0C 0001 0000 0000 0000 0000 0BB8")
