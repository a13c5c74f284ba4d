"""The safety I/O driver against its simulator over real loopback Modbus TCP.

The simulator is stepped explicitly; the heartbeat watchdog is driven through the `wall_now`
argument of `step`, so no test sleeps to make time pass."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from controller.config.line import SafetyIoConfig, load_line_config
from drivers.codecs import safety_io_map as io_map
from drivers.errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceExceptionResponse,
    DeviceProtocolError,
    DeviceTimeout,
)
from drivers.safety_io import SafetyInputs, SafetyIo, SafetyOutputs
from drivers.transports.endpoint import Endpoint
from drivers.transports.modbus import ModbusTransport
from simulators.faults import FaultBoard
from simulators.modbus_bus import ModbusBusServer
from simulators.plant import Plant
from simulators.safety_io import SafetyIoSim
from tests.waiting import first_failure

WALL0 = 1000.0
OWNER = 0x1A2B  # the rig's controller
OTHER = 0x2B3C  # a second controller on the same line


@dataclass
class Rig:
    config: SafetyIoConfig
    faults: FaultBoard
    plant: Plant
    sim: SafetyIoSim
    bus: ModbusBusServer
    transport: ModbusTransport
    io: SafetyIo
    wall: float = WALL0

    def step(self, wall_s: float = 0.01) -> None:
        """Advance wall time (and the same process time) by wall_s and step the PLC. The
        plant's own physics is not stepped: tests set the plant state the PLC senses."""
        self.wall += wall_s
        self.sim.step(wall_s, self.wall)

    async def alive(self) -> SafetyInputs:
        """A heartbeat, a step, a read: what a healthy controller cycle sees."""
        await self.io.heartbeat()
        self.step()
        return await self.io.read()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    line = load_line_config()
    config = line.safety_io()
    faults = FaultBoard()
    plant = Plant.from_line(line, faults)
    sim = SafetyIoSim("safety_io", config, plant, faults)
    bus = ModbusBusServer("io_link", "tcp", [sim], faults)
    await bus.start()
    transport = ModbusTransport(
        "io_link", Endpoint("modbus-tcp", host="127.0.0.1", port=bus.port), timeout_s=0.2
    )
    try:
        io = SafetyIo(transport, config.unit, owner_id=OWNER)
        yield Rig(config, faults, plant, sim, bus, transport, io)
    finally:
        await transport.close()
        await bus.stop()


async def _first_error(rig: Rig) -> DeviceError:
    """Poll until a read fails (a fault takes effect on the next frame) and return the error."""
    return await first_failure(rig.io.read, what="a read to fail")


# -- inputs --------------------------------------------------------------------------------
async def test_healthy_inputs(rig: Rig) -> None:
    await rig.io.write_outputs(SafetyOutputs(exhaust_fan=True, rf_permit=True))
    inputs = await rig.alive()
    plant_cfg = rig.plant.config
    assert inputs == SafetyInputs(
        estop_ok=True,
        doors_closed=True,
        scrubber_ready=True,
        safety_relay_ok=True,
        rf_enable=True,
        plasma_optical=False,
        heartbeat_ok=True,
        gas_supply_ok=True,
        water_flow_l_min=pytest.approx(plant_cfg.water_flow_l_min),  # type: ignore[arg-type]
        water_temp_c=pytest.approx(plant_cfg.water_temp_c),  # type: ignore[arg-type]
        exhaust_draft_pa=pytest.approx(plant_cfg.exhaust_draft_pa),  # type: ignore[arg-type]
        supply_ar_bar=pytest.approx(plant_cfg.gas_supply_bar),  # type: ignore[arg-type]
        supply_o2_bar=pytest.approx(plant_cfg.gas_supply_bar),  # type: ignore[arg-type]
        supply_n2_bar=pytest.approx(plant_cfg.gas_supply_bar),  # type: ignore[arg-type]
        supply_sicl4_bar=pytest.approx(plant_cfg.gas_supply_bar),  # type: ignore[arg-type]
        supply_dopant_bar=pytest.approx(plant_cfg.gas_supply_bar),  # type: ignore[arg-type]
        gas_detector_ppm=0.0,
        rod_temperature_c=pytest.approx(plant_cfg.ambient_c),  # type: ignore[arg-type]
        room_o2_pct=pytest.approx(20.9),  # type: ignore[arg-type]
        heartbeat_latched=False,
        outputs_effective=SafetyOutputs(exhaust_fan=True, rf_permit=True),
        line_owner=OWNER,
        refused_owner=0,
    )
    assert rig.plant.rf_enable
    assert rig.plant.exhaust_fan_on


async def test_no_draft_without_the_exhaust_fan(rig: Rig) -> None:
    inputs = await rig.alive()
    assert inputs.exhaust_draft_pa == 0.0
    assert inputs.exhaust_draft_pa > rig.config.exhaust_trip_pa


async def test_plasma_and_rod_temperature_come_from_the_plant(rig: Rig) -> None:
    rig.plant.plasma_lit = True
    rig.plant.rod_temperature_c = 1480.0
    rig.step()
    inputs = await rig.io.read()
    assert inputs.plasma_optical
    assert inputs.rod_temperature_c == pytest.approx(1480.0)


# Each process fault and what the inputs must show.
FAULT_SIGNATURES: dict[str, Callable[[SafetyInputs, SafetyIoConfig], bool]] = {
    "estop": lambda i, c: not i.estop_ok and not i.safety_relay_ok and not i.rf_enable,
    "safety_relay_open": lambda i, c: i.estop_ok and not i.safety_relay_ok and not i.rf_enable,
    "door_open": lambda i, c: not i.doors_closed and i.rf_enable,
    "scrubber_not_ready": lambda i, c: not i.scrubber_ready,
    "water_flow_low": lambda i, c: i.water_flow_l_min < c.water_flow_min_l_min,
    "water_temp_high": lambda i, c: i.water_temp_c > c.water_temp_max_c,
    "exhaust_lost": lambda i, c: i.exhaust_draft_pa > c.exhaust_trip_pa,
    "gas_alarm": lambda i, c: i.gas_detector_ppm >= c.gas_detector_trip_ppm,
    "o2_enrichment": lambda i, c: i.room_o2_pct > c.room_o2_trip_pct
    and i.room_o2_pct == pytest.approx(25.0),
    "supply_pressure_low": lambda i, c: not i.gas_supply_ok
    and all(
        p < c.gas_supply_min_bar
        for p in (
            i.supply_ar_bar, i.supply_o2_bar, i.supply_n2_bar, i.supply_sicl4_bar,
            i.supply_dopant_bar,
        )
    ),
}


@pytest.mark.parametrize("kind", sorted(FAULT_SIGNATURES))
async def test_process_fault_shows_in_the_inputs(rig: Rig, kind: str) -> None:
    await rig.io.write_outputs(SafetyOutputs(exhaust_fan=True, rf_permit=True))
    healthy = await rig.alive()
    assert not FAULT_SIGNATURES[kind](healthy, rig.config)
    rig.faults.inject("safety_io", kind)
    faulted = await rig.alive()
    assert FAULT_SIGNATURES[kind](faulted, rig.config)
    rig.faults.clear("safety_io", kind)
    assert await rig.alive() == healthy


async def test_fault_value_from_params(rig: Rig) -> None:
    rig.faults.inject("safety_io", "water_temp_high", params={"value": 41.5})
    rig.faults.inject("safety_io", "supply_pressure_low", params={"gas": "o2", "value": 1.2})
    rig.faults.inject("safety_io", "o2_enrichment", params={"value": 23.6})
    inputs = await rig.alive()
    assert inputs.room_o2_pct == pytest.approx(23.6)
    assert inputs.water_temp_c == pytest.approx(41.5)
    assert inputs.supply_o2_bar == pytest.approx(1.2)
    assert inputs.supply_ar_bar == pytest.approx(rig.plant.config.gas_supply_bar)
    assert not inputs.gas_supply_ok


async def test_estop_cuts_drives_valves_and_heaters(rig: Rig) -> None:
    commanded = SafetyOutputs(
        gas_master_valve=True, precursor_valve=True, heater_a=True, heater_b=True, rf_permit=True
    )
    await rig.io.write_outputs(commanded)
    assert (await rig.alive()).outputs_effective == commanded
    assert rig.plant.master_valve_open
    assert rig.plant.drives_powered

    rig.faults.inject("safety_io", "estop")
    inputs = await rig.alive()
    # IR 12 shows what the relay leaves of the word: valves closed, heaters and RF off.
    assert inputs.outputs_effective == SafetyOutputs()
    assert not rig.plant.drives_powered
    assert not rig.plant.rf_enable
    assert not rig.plant.master_valve_open
    assert not rig.plant.precursor_valve_open
    assert rig.plant.heaters_on == [False, False]
    # The outputs word is the controller's: the relay overrides it, it does not rewrite it.
    assert (await rig.io.read_outputs()).gas_master_valve

    rig.faults.clear("safety_io", "estop")
    await rig.alive()
    assert rig.plant.drives_powered
    assert rig.plant.master_valve_open
    assert rig.plant.rf_enable


async def test_stuck_and_drift_apply_to_analog_values(rig: Rig) -> None:
    rig.plant.rod_temperature_c = 800.0
    await rig.alive()
    rig.faults.inject("safety_io", "stuck")
    rig.step()
    rig.plant.rod_temperature_c = 900.0
    assert (await rig.alive()).rod_temperature_c == pytest.approx(800.0)
    rig.faults.clear("safety_io", "stuck")
    assert (await rig.alive()).rod_temperature_c == pytest.approx(900.0)

    rig.faults.inject("safety_io", "drift", params={"offset": 5.0, "channel": "water_temp_c"})
    inputs = await rig.alive()
    assert inputs.water_temp_c == pytest.approx(rig.plant.config.water_temp_c + 5.0)
    assert inputs.rod_temperature_c == pytest.approx(900.0)

    rig.faults.inject("safety_io", "drift", params={"rate_per_s": 0.5, "channel": "water_temp_c"})
    for _ in range(100):
        rig.step()  # 1 s of process time
    inputs = await rig.alive()
    assert inputs.water_temp_c == pytest.approx(rig.plant.config.water_temp_c + 0.5, abs=0.02)


# -- heartbeat watchdog --------------------------------------------------------------------
async def test_no_rf_enable_before_the_first_heartbeat(rig: Rig) -> None:
    await rig.io.set_output("rf_permit", True)
    rig.step()
    inputs = await rig.io.read()
    assert not inputs.heartbeat_ok
    assert not inputs.rf_enable
    assert inputs.safety_relay_ok
    assert not rig.plant.rf_enable
    rig.step(rig.config.heartbeat_timeout_s * 5)  # no beat yet is not a heartbeat LOSS
    assert not (await rig.io.read()).heartbeat_latched
    inputs = await rig.alive()
    assert inputs.rf_enable
    assert inputs.outputs_effective.rf_permit
    assert not inputs.heartbeat_latched


async def test_rf_enable_needs_the_rf_permit(rig: Rig) -> None:
    inputs = await rig.alive()
    assert inputs.heartbeat_ok
    assert inputs.safety_relay_ok
    assert not inputs.rf_enable  # the controller has not given its permit
    assert not inputs.outputs_effective.rf_permit
    assert not rig.plant.rf_enable
    await rig.io.set_output("rf_permit", True)
    inputs = await rig.alive()
    assert inputs.rf_enable
    assert inputs.outputs_effective.rf_permit
    assert rig.plant.rf_enable
    await rig.io.set_output("rf_permit", False)  # dropping the permit drops the enable at once
    assert not rig.plant.rf_enable
    assert not (await rig.io.read()).rf_enable


async def test_relay_open_drops_rf_whatever_the_permit(rig: Rig) -> None:
    await rig.io.set_output("rf_permit", True)
    await rig.alive()
    rig.faults.inject("safety_io", "safety_relay_open")
    inputs = await rig.alive()
    assert not inputs.rf_enable
    assert not inputs.outputs_effective.rf_permit
    assert (await rig.io.read_outputs()).rf_permit  # the word itself is the controller's


async def test_heartbeat_loss_drops_rf_and_latches(rig: Rig) -> None:
    timeout = rig.config.heartbeat_timeout_s
    await rig.io.set_output("rf_permit", True)
    await rig.alive()
    rig.step(timeout * 0.9)
    assert (await rig.io.read()).rf_enable
    rig.step(timeout * 0.2)  # past the timeout since the last beat, in wall time
    inputs = await rig.io.read()
    assert not inputs.heartbeat_ok
    assert inputs.heartbeat_latched
    assert not inputs.rf_enable
    assert inputs.safety_relay_ok
    assert not rig.plant.rf_enable

    inputs = await rig.alive()  # beats resume: the loss stays latched, RF stays off
    assert inputs.heartbeat_ok
    assert inputs.heartbeat_latched
    assert not inputs.rf_enable
    assert not rig.plant.rf_enable

    await rig.io.reset_heartbeat_latch()  # beats arriving: the reset is accepted
    inputs = await rig.alive()
    assert not inputs.heartbeat_latched
    assert inputs.rf_enable
    assert rig.plant.rf_enable


async def _beat(rig: Rig, owner: int, counter: int) -> None:
    await rig.transport.write_registers(
        rig.config.unit, io_map.HR_BEAT_OWNER, io_map.encode_beat(owner, counter))


async def test_rewriting_the_same_value_is_no_heartbeat(rig: Rig) -> None:
    await _beat(rig, OWNER, 7)
    rig.step()
    for _ in range(3):
        rig.step(rig.config.heartbeat_timeout_s * 0.5)
        await _beat(rig, OWNER, 7)
    rig.step()
    assert not (await rig.io.read()).heartbeat_ok


async def test_watchdog_runs_in_wall_time_not_process_time(rig: Rig) -> None:
    await rig.alive()
    # A huge process step (a fast time scale) with little wall time: the beat is still fresh.
    rig.wall += 0.1
    rig.sim.step(3600.0, rig.wall)
    assert (await rig.io.read()).heartbeat_ok


async def test_heartbeat_counter_wraps(rig: Rig) -> None:
    await rig.io.heartbeat()
    await rig.io.heartbeat()
    assert rig.sim.holding[io_map.HR_BEAT_COUNTER] == 2
    rig.io._heartbeat = 65534  # as after a long run
    await rig.io.heartbeat()
    assert rig.sim.holding[io_map.HR_BEAT_COUNTER] == 65535
    rig.step()
    await rig.io.heartbeat()
    assert rig.sim.holding[io_map.HR_BEAT_COUNTER] == 0
    rig.step(rig.config.heartbeat_timeout_s * 0.9)
    assert (await rig.io.read()).heartbeat_ok  # the wrap to 0 counted as a beat


# -- the line's owner: one controller per line (docs/devices.md) -----------------------------
def _other(rig: Rig) -> SafetyIo:
    """A second controller's driver on the same PLC."""
    return SafetyIo(rig.transport, rig.config.unit, name="other", owner_id=OTHER)


async def test_a_free_line_is_claimed_by_the_first_beat(rig: Rig) -> None:
    before = await rig.io.read()
    assert (before.line_owner, before.refused_owner) == (io_map.NO_OWNER, io_map.NO_OWNER)
    inputs = await rig.alive()
    assert inputs.line_owner == OWNER and inputs.heartbeat_ok


async def test_a_second_controller_is_refused_and_its_beats_do_not_count(rig: Rig) -> None:
    other = _other(rig)
    await rig.io.set_output("rf_permit", True)
    await rig.alive()
    await other.heartbeat()  # at once, before any step: the owner's beat is fresh
    inputs = await rig.io.read()
    assert (inputs.line_owner, inputs.refused_owner) == (OWNER, OTHER)
    # Only the other controller beats from here: its beats keep nothing alive.
    for _ in range(3):
        rig.step(rig.config.heartbeat_timeout_s * 0.3)
        await other.heartbeat()
        assert (await rig.io.read()).line_owner == OWNER
    rig.step(rig.config.heartbeat_timeout_s * 0.2)  # past the timeout since OWNER's last beat
    inputs = await rig.io.read()
    assert not inputs.heartbeat_ok and inputs.heartbeat_latched and not inputs.rf_enable


async def test_the_line_changes_hands_once_the_owners_heartbeat_is_lost(rig: Rig) -> None:
    other = _other(rig)
    await rig.io.write_outputs(SafetyOutputs(exhaust_fan=True, rf_permit=True))
    await rig.alive()
    rig.step(rig.config.heartbeat_timeout_s * 1.1)
    assert (await rig.io.read()).heartbeat_latched
    await other.heartbeat()  # the owner is lost: the claim is accepted and the beat counts
    rig.step()
    inputs = await other.read()
    assert inputs.line_owner == OTHER and inputs.heartbeat_ok
    assert inputs.heartbeat_latched and not inputs.rf_enable  # the new owner resets it
    await rig.io.heartbeat()  # the old owner comes back: refused, not counted
    assert (await other.read()).refused_owner == OWNER
    await other.write_outputs(SafetyOutputs(exhaust_fan=True))
    await other.reset_heartbeat_latch()
    rig.step()
    assert not (await other.read()).heartbeat_latched


async def test_the_owner_keeps_its_line_across_its_own_loss(rig: Rig) -> None:
    await rig.alive()
    rig.step(rig.config.heartbeat_timeout_s * 1.1)
    assert (await rig.io.read()).heartbeat_latched
    inputs = await rig.alive()  # nobody claimed it in between: its beats count again
    assert inputs.line_owner == OWNER and inputs.heartbeat_ok
    assert inputs.refused_owner == io_map.NO_OWNER


async def test_a_claim_waits_for_a_beat_not_yet_stamped(rig: Rig) -> None:
    """A beat the PLC has not yet stamped (no step since) is a live owner's: no handover."""
    await rig.io.heartbeat()
    await _other(rig).heartbeat()
    inputs = await rig.io.read()
    assert (inputs.line_owner, inputs.refused_owner) == (OWNER, OTHER)


# -- outputs -------------------------------------------------------------------------------
async def test_outputs_drive_the_plant(rig: Rig) -> None:
    outputs = SafetyOutputs(gas_master_valve=True, precursor_valve=True, heater_a=True)
    await rig.io.write_outputs(outputs)
    assert await rig.io.read_outputs() == outputs
    rig.step()
    assert rig.plant.master_valve_open
    assert rig.plant.precursor_valve_open
    assert rig.plant.heaters_on == [True, False]

    await rig.io.set_output("precursor_valve", False)
    await rig.io.set_output("heater_b", True)
    rig.step()
    assert rig.plant.master_valve_open
    assert not rig.plant.precursor_valve_open
    assert rig.plant.heaters_on == [True, True]
    assert rig.io.outputs == SafetyOutputs(gas_master_valve=True, heater_a=True, heater_b=True)


async def test_all_outputs_start_off_and_valves_closed(rig: Rig) -> None:
    assert await rig.io.read_outputs() == SafetyOutputs()
    assert not rig.plant.master_valve_open
    assert not rig.plant.precursor_valve_open


async def test_set_output_writes_the_whole_word_without_reading(rig: Rig) -> None:
    await rig.io.write_outputs(SafetyOutputs(gas_master_valve=True, exhaust_fan=True))
    # Something else clears the word behind the driver's back.
    await rig.transport.write_register(rig.config.unit, io_map.HR_OUTPUTS, 0)
    before = rig.transport.requests
    await rig.io.set_output("beacon_green", True)
    assert rig.transport.requests == before + 1  # one write, no read
    assert rig.sim.holding[io_map.HR_OUTPUTS] == 0b10000101


async def test_unknown_output_name_is_refused(rig: Rig) -> None:
    with pytest.raises(ValueError, match="unknown output"):
        await rig.io.set_output("coffee_machine", True)
    assert rig.transport.requests == 0


async def test_reserved_output_bits_are_an_exception_response(rig: Rig) -> None:
    with pytest.raises(DeviceExceptionResponse) as refused:
        await rig.transport.write_register(rig.config.unit, io_map.HR_OUTPUTS, 0x0200)
    assert refused.value.exception_code == 3
    await rig.transport.write_register(rig.config.unit, io_map.HR_OUTPUTS, 0x0100)  # rf_permit
    assert (await rig.io.read_outputs()).rf_permit


# -- link faults ---------------------------------------------------------------------------
async def test_silent_link_times_out(rig: Rig) -> None:
    rig.faults.inject("safety_io", "silent")
    assert isinstance(await _first_error(rig), DeviceTimeout)


async def test_corrupt_reply_is_a_protocol_error(rig: Rig) -> None:
    rig.faults.inject("safety_io", "corrupt")
    assert isinstance(await _first_error(rig), DeviceProtocolError)


async def test_torn_reply_fails(rig: Rig) -> None:
    rig.faults.inject("safety_io", "torn")
    assert isinstance(await _first_error(rig), DeviceTimeout | DeviceProtocolError)


async def test_disconnect_then_recovery(rig: Rig) -> None:
    await rig.alive()
    rig.faults.inject("safety_io", "disconnect")
    end = time.monotonic() + 10.0
    error = await _first_error(rig)
    while not isinstance(error, DeviceDisconnected) and time.monotonic() < end:
        error = await _first_error(rig)
    assert isinstance(error, DeviceDisconnected)

    rig.faults.clear("safety_io", "disconnect")
    end = time.monotonic() + 10.0
    while True:
        try:
            inputs = await rig.io.read()
            break
        except DeviceError:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.05)
    assert inputs.estop_ok
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


async def test_wire_read_inputs(rig: Rig) -> None:
    await rig.io.write_outputs(SafetyOutputs(exhaust_fan=True, rf_permit=True))
    await rig.alive()
    request = bytes.fromhex("0011 0000 0006 01 04 0000 000F")
    reply = await _exchange(rig, request, 9 + 2 * io_map.INPUT_COUNT)
    assert reply == bytes.fromhex(
        "0011 0000 0021 01 04 1E"
        "00DF"  # digital: all true but plasma_optical (and heartbeat_latched, bit 8)
        "00FA"  # water flow 25.0 L/min
        "00DC"  # water temperature 22.0 C
        "FE0C"  # exhaust draft -50.0 Pa (signed)
        "01F4 01F4 01F4 01F4 01F4"  # supplies 5.00 bar
        "0000"  # acid-gas detector 0 ppm
        "00FA"  # rod 25.0 C
        "082A"  # room O2 20.90 %
        "0104"  # effective outputs: exhaust fan, RF permit (the enable given)
        "1A2B"  # the line's owner: the rig's controller
        "0000"  # no beat refused
    )


async def test_wire_beat_is_one_fc16_of_owner_and_counter(rig: Rig) -> None:
    # FC 16 at HR 3, 2 registers, 4 bytes: owner 0x1A2B, counter 42; the reply echoes the
    # address and the count.
    request = bytes.fromhex("0012 0000 000B 01 10 0003 0002 04 1A2B 002A")
    assert await _exchange(rig, request, 12) == bytes.fromhex("0012 0000 0006 01 10 0003 0002")
    rig.step()
    assert rig.sim.heartbeat_ok
    assert rig.sim.owner == OWNER
    # HR 1 reads the count of the last beat counted, HR 3-4 the beat itself.
    read = bytes.fromhex("0013 0000 0006 01 03 0001 0004")
    assert await _exchange(rig, read, 17) == bytes.fromhex(
        "0013 0000 000B 01 03 08 002A 0000 1A2B 002A")


async def test_wire_beat_and_inputs_in_one_fc23(rig: Rig) -> None:
    """The safety cycle's exchange: the beat written to HR 3-4, then the inputs' read-only
    copy at HR 16-30 read back, in one request."""
    await rig.io.write_outputs(SafetyOutputs(exhaust_fan=True, rf_permit=True))
    await rig.alive()
    copy = await _exchange(rig, bytes.fromhex("0017 0000 0006 01 03 0010 000F"),
                           9 + 2 * io_map.INPUT_COUNT)
    inputs = await _exchange(rig, bytes.fromhex("0018 0000 0006 01 04 0000 000F"),
                             9 + 2 * io_map.INPUT_COUNT)
    assert copy[9:] == inputs[9:]  # the copy is the input block, word for word
    # FC 23: read 15 from HR 16, write 2 at HR 3 (4 bytes: owner 0x1A2B, counter 43).
    request = bytes.fromhex("0019 0000 000F 01 17 0010 000F 0003 0002 04 1A2B 002B")
    reply = await _exchange(rig, request, 9 + 2 * io_map.INPUT_COUNT)
    assert reply[:9] == bytes.fromhex("0019 0000 0021 01 17 1E")
    assert reply[9:] == inputs[9:]
    rig.step()
    read = bytes.fromhex("001A 0000 0006 01 03 0001 0004")
    assert await _exchange(rig, read, 17) == bytes.fromhex(
        "001A 0000 000B 01 03 08 002B 0000 1A2B 002B")  # the beat was counted


async def test_the_driver_beats_and_reads_in_one_exchange(rig: Rig) -> None:
    rig.bus.requests_seen.clear()
    inputs = await rig.io.beat_and_read()
    assert list(rig.bus.requests_seen) == [(rig.config.unit, 23, io_map.HR_BEAT_OWNER)]
    assert inputs == await rig.io.read()
    rig.step()
    assert rig.sim.heartbeat_ok and rig.sim.owner == OWNER
    after = await rig.io.beat_and_read()  # the next counter: a new beat
    rig.step()
    assert after.heartbeat_ok and rig.sim.heartbeat_ok


@pytest.mark.parametrize(
    ("request_hex", "code"),
    [
        ("01 06 0010 0001", 2),  # the inputs' copy is read-only
        ("01 10 000F 0002 04 0000 0001", 2),  # a write reaching into it
        ("01 03 000E 0004", 2),  # a read across the settings and the copy
        ("01 03 001E 0002", 2),  # past the copy's end
    ],
)
async def test_wire_the_inputs_copy_is_read_only_and_whole(rig: Rig, request_hex: str,
                                                           code: int) -> None:
    pdu = bytes.fromhex(request_hex)
    request = bytes.fromhex("0021 0000") + len(pdu).to_bytes(2, "big") + pdu
    reply = await _exchange(rig, request, 9)
    assert reply == bytes.fromhex(f"0021 0000 0003 01 {pdu[1] | 0x80:02X} {code:02X}")


@pytest.mark.parametrize(
    ("request_hex", "code"),
    [
        ("01 06 0001 002A", 2),  # the old beat, HR 1 alone: read-only now (no owner id)
        ("01 06 0004 002A", 2),  # the counter without the owner id
        ("01 10 0003 0001 02 1A2B", 2),  # the owner id without the counter
        ("01 10 0003 0002 04 0000 002A", 3),  # owner id 0: the free line's mark, nobody's id
    ],
)
async def test_wire_malformed_beats_are_exceptions(rig: Rig, request_hex: str,
                                                   code: int) -> None:
    pdu = bytes.fromhex(request_hex)
    request = bytes.fromhex("0020 0000") + len(pdu).to_bytes(2, "big") + pdu
    reply = await _exchange(rig, request, 9)
    assert reply == bytes.fromhex(f"0020 0000 0003 01 {pdu[1] | 0x80:02X} {code:02X}")
    rig.step()
    assert not rig.sim.heartbeat_ok and rig.sim.owner == io_map.NO_OWNER


async def test_wire_outputs_with_reserved_bits_is_exception_3(rig: Rig) -> None:
    request = bytes.fromhex("0013 0000 0006 01 06 0000 0200")
    assert await _exchange(rig, request, 9) == bytes.fromhex("0013 0000 0003 01 86 03")


async def test_wire_reset_command_echoes_and_other_values_are_exception_3(rig: Rig) -> None:
    reset = bytes.fromhex("0014 0000 0006 01 06 0002 0001")
    assert await _exchange(rig, reset, 12) == reset
    bad = bytes.fromhex("0015 0000 0006 01 06 0002 0002")
    assert await _exchange(rig, bad, 9) == bytes.fromhex("0015 0000 0003 01 86 03")
    # A command register: it reads back 0.
    read = bytes.fromhex("0016 0000 0006 01 03 0002 0001")
    assert await _exchange(rig, read, 11) == bytes.fromhex("0016 0000 0005 01 03 02 0000")


# -- heartbeat loss: the PLC's latched reaction (docs/devices.md) ----------------------------
RUNNING = SafetyOutputs(
    gas_master_valve=True,
    precursor_valve=True,
    exhaust_fan=False,
    heater_a=True,
    heater_b=True,
    beacon_green=True,
    rf_permit=True,
)


async def _lose_the_heartbeat(rig: Rig) -> SafetyInputs:
    await rig.io.write_outputs(RUNNING)
    before = await rig.alive()
    assert before.outputs_effective == RUNNING
    assert rig.plant.master_valve_open
    rig.step(rig.config.heartbeat_timeout_s * 1.1)
    inputs = await rig.io.read()
    assert inputs.heartbeat_latched
    return inputs


def _process_step(rig: Rig, process_s: float) -> None:
    """A big process-time step in little wall time (a fast --time-scale)."""
    rig.wall += 0.01
    rig.sim.step(process_s, rig.wall)


async def test_heartbeat_loss_posture_then_master_valve_after_the_purge(rig: Rig) -> None:
    inputs = await _lose_the_heartbeat(rig)
    # At once: RF enable dropped, precursor valve closed, heaters off, exhaust fan forced on;
    # the master valve stays open for the purge.
    assert inputs.outputs_effective == SafetyOutputs(
        gas_master_valve=True, exhaust_fan=True, beacon_green=True
    )
    assert not inputs.rf_enable
    assert not rig.plant.rf_enable
    assert not rig.plant.precursor_valve_open
    assert rig.plant.heaters_on == [False, False]
    assert rig.plant.exhaust_fan_on
    assert rig.plant.master_valve_open
    assert inputs.exhaust_draft_pa == pytest.approx(rig.plant.config.exhaust_draft_pa)
    # The word stays the controller's: the PLC overrides it, it does not rewrite it.
    assert await rig.io.read_outputs() == RUNNING

    purge = rig.config.heartbeat_loss_purge_s
    _process_step(rig, purge - 1.0)
    assert rig.plant.master_valve_open  # the purge counts PROCESS seconds
    _process_step(rig, 1.5)
    assert not rig.plant.master_valve_open
    inputs = await rig.io.read()
    assert not inputs.outputs_effective.gas_master_valve
    assert inputs.outputs_effective.exhaust_fan
    assert inputs.heartbeat_latched


async def test_purge_runs_in_process_time_not_wall_time(rig: Rig) -> None:
    await _lose_the_heartbeat(rig)
    # Long in wall time, short in process time: the purge is not over.
    rig.wall += rig.config.heartbeat_loss_purge_s * 2
    rig.sim.step(0.1, rig.wall)
    assert rig.plant.master_valve_open


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("exhaust_lost", {}),
        ("scrubber_not_ready", {}),
        ("gas_alarm", {}),
        ("o2_enrichment", {}),
    ],
)
async def test_no_purge_while_purging_would_push_gas_into_the_room(
    rig: Rig, kind: str, params: dict[str, float]
) -> None:
    await _lose_the_heartbeat(rig)
    rig.step()
    assert rig.plant.master_valve_open  # purging
    rig.faults.inject("safety_io", kind, params=params)
    rig.step()  # at once: the master valve closes
    assert not rig.plant.master_valve_open
    rig.faults.clear("safety_io", kind)
    rig.step()
    assert not rig.plant.master_valve_open  # and stays closed until a reset


async def test_a_loss_during_a_trip_closes_the_master_valve_at_once(rig: Rig) -> None:
    await rig.io.write_outputs(RUNNING)
    await rig.alive()
    rig.faults.inject("safety_io", "gas_alarm")
    rig.step(rig.config.heartbeat_timeout_s * 1.1)
    inputs = await rig.io.read()
    assert inputs.heartbeat_latched
    assert not inputs.outputs_effective.gas_master_valve
    assert not rig.plant.master_valve_open


async def test_reset_without_beats_stays_latched(rig: Rig) -> None:
    await _lose_the_heartbeat(rig)
    await rig.io.reset_heartbeat_latch()
    rig.step()
    inputs = await rig.io.read()
    assert inputs.heartbeat_latched
    assert not inputs.heartbeat_ok
    assert not rig.plant.rf_enable


async def test_outputs_written_while_latched_are_stored_and_overridden(rig: Rig) -> None:
    await _lose_the_heartbeat(rig)
    _process_step(rig, rig.config.heartbeat_loss_purge_s + 1)
    safe = SafetyOutputs(exhaust_fan=True, beacon_red=True)
    await rig.io.write_outputs(dataclasses.replace(safe, precursor_valve=True, rf_permit=True))
    inputs = await rig.alive()
    assert inputs.outputs_effective == dataclasses.replace(safe)  # nothing but fan and beacon
    assert not rig.plant.precursor_valve_open
    assert not rig.plant.rf_enable

    # The controller writes what it wants after the reset, then resets: the word rules again.
    await rig.io.write_outputs(safe)
    await rig.io.reset_heartbeat_latch()
    inputs = await rig.alive()
    assert not inputs.heartbeat_latched
    assert inputs.outputs_effective == safe
    assert not rig.plant.master_valve_open
    # A reset does not re-open the master valve by itself: the word says closed.
    await rig.io.write_outputs(dataclasses.replace(safe, gas_master_valve=True))
    rig.step()
    assert rig.plant.master_valve_open


async def test_a_second_loss_after_a_reset_latches_again(rig: Rig) -> None:
    await _lose_the_heartbeat(rig)
    await rig.io.heartbeat()
    await rig.io.reset_heartbeat_latch()
    inputs = await rig.alive()
    assert not inputs.heartbeat_latched
    _process_step(rig, 0.0)
    rig.step(rig.config.heartbeat_timeout_s * 1.1)
    inputs = await rig.io.read()
    assert inputs.heartbeat_latched
    assert rig.plant.master_valve_open  # a fresh purge


async def test_reset_command_other_values_are_refused(rig: Rig) -> None:
    with pytest.raises(DeviceExceptionResponse) as refused:
        await rig.transport.write_register(rig.config.unit, io_map.HR_COMMAND, 2)
    assert refused.value.exception_code == 3
    assert await rig.transport.read_holding(rig.config.unit, io_map.HR_COMMAND, 1) == [0]


async def test_urgent_outputs_write_goes_ahead_of_queued_polls(rig: Rig) -> None:
    await rig.transport.connect()
    rig.bus.requests_seen.clear()
    polls = [asyncio.create_task(rig.io.read()) for _ in range(6)]
    beat = asyncio.create_task(rig.io.heartbeat())
    for _ in range(20):
        await asyncio.sleep(0)
        if rig.transport.queued == 6:
            break
    assert rig.transport.queued == 6  # one poll in flight, five polls and a beat queued
    await rig.io.write_outputs(SafetyOutputs(exhaust_fan=True), urgent=True)
    await asyncio.gather(*polls, beat)
    poll = (rig.config.unit, 4, io_map.IR_DIGITAL)
    assert list(rig.bus.requests_seen) == [
        poll,
        (rig.config.unit, 6, io_map.HR_OUTPUTS),
        *[poll] * 5,
        (rig.config.unit, 16, io_map.HR_BEAT_OWNER),
    ]
