"""Third-party Modbus masters read the RF generator's forward power at the register
docs/devices.md gives: Debian's ``mbpoll`` (when installed; CI installs it with apt) run with
the exact command the docs print, and a bare pymodbus client with no project code.

The address and the command are taken from the docs themselves, so the docs cannot drift
from what the simulator serves. The RF is switched on through the real drivers (the safety
PLC needs a heartbeat and the RF permit before it enables RF) and the simulator is stepped
explicitly."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from controller.config.line import load_line_config
from drivers.rf_generator import RfGenerator
from drivers.safety_io import SafetyIo
from drivers.transports.endpoint import Endpoint
from drivers.transports.modbus import ModbusTransport
from simulators.faults import FaultBoard
from simulators.modbus_bus import ModbusBusServer
from simulators.plant import Plant
from simulators.rf_generator import RfGeneratorSim
from simulators.safety_io import SafetyIoSim
from tests.components import find_tool, require_tool

DEVICES_MD = Path(__file__).resolve().parents[2] / "docs" / "devices.md"
HOST = "127.0.0.1"
POWER_KW = 12.3  # a distinctive value: the register must read 123
STEP_S = 0.05


@dataclass(frozen=True)
class DocumentedRegister:
    pdu_address: int
    mbpoll_reference: int
    mbpoll_command: str  # with <port> and <host> placeholders, as the docs print it


def _rf_section() -> str:
    text = DEVICES_MD.read_text()
    match = re.search(r"^## RF generator.*?(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert match, "docs/devices.md has no RF generator section"
    return match.group(0)


def documented_forward_power() -> DocumentedRegister:
    section = _rf_section()
    row = re.search(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*\**forward power\**\s*\|", section,
                    re.MULTILINE)
    assert row, "no 'forward power' row (PDU addr | mbpoll ref) in the RF input register table"
    command = re.search(r"`(mbpoll [^`]*?-t 3 -r \d+[^`]*)`", section)
    assert command, "no mbpoll command for the forward power in the RF section"
    return DocumentedRegister(
        pdu_address=int(row.group(1)),
        mbpoll_reference=int(row.group(2)),
        mbpoll_command=" ".join(command.group(1).split()),  # the docs wrap it over two lines
    )


@dataclass
class Rig:
    faults: FaultBoard
    plant: Plant
    rf_sim: RfGeneratorSim
    io_sim: SafetyIoSim
    rf_bus: ModbusBusServer
    rf: RfGenerator
    io: SafetyIo
    unit: int

    def run(self, seconds: float) -> None:
        """Advance both simulators and the plant; wall time stands still (no watchdog trip)."""
        for _ in range(round(seconds / STEP_S)):
            self.io_sim.step(STEP_S, 0.0)
            self.rf_sim.step(STEP_S, 0.0)
            self.plant.step(STEP_S)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    line = load_line_config()
    faults = FaultBoard()
    plant = Plant.from_line(line, faults)
    rf_sim = RfGeneratorSim("rf", line.rf(), plant, faults)
    io_sim = SafetyIoSim("safety_io", line.safety_io(), plant, faults)
    rf_bus = ModbusBusServer("rf_link", "tcp", [rf_sim], faults, host=HOST)
    io_bus = ModbusBusServer("io_link", "tcp", [io_sim], faults, host=HOST)
    await rf_bus.start()
    await io_bus.start()
    rf_transport = ModbusTransport("rf_link", Endpoint("modbus-tcp", host=HOST, port=rf_bus.port))
    io_transport = ModbusTransport("io_link", Endpoint("modbus-tcp", host=HOST, port=io_bus.port))
    config = line.rf()
    rf = RfGenerator(rf_transport, config.unit, max_power_kw=config.max_power_kw,
                     max_slew_kw_s=config.max_slew_kw_s)
    io = SafetyIo(io_transport, line.safety_io().unit)
    try:
        yield Rig(faults, plant, rf_sim, io_sim, rf_bus, rf, io, config.unit)
    finally:
        await rf_transport.close()
        await io_transport.close()
        await rf_bus.stop()
        await io_bus.stop()


async def _rf_on_at_power(rig: Rig) -> None:
    await rig.io.set_output("rf_permit", True)  # the controller's RF permit at the PLC
    await rig.io.heartbeat()
    rig.run(STEP_S)  # the PLC sees the beat and closes the RF enable
    assert rig.plant.rf_enable
    await rig.rf.set_power_kw(POWER_KW)
    await rig.rf.rf_on()
    rig.run(POWER_KW / rig.rf_sim.config.max_slew_kw_s + 1.0)
    status = await rig.rf.read()
    assert status.rf_on
    assert status.forward_kw == pytest.approx(POWER_KW)


def test_docs_reference_numbering_is_consistent() -> None:
    documented = documented_forward_power()
    # mbpoll numbers references from 1: reference = PDU address + 1, unless -0 is given.
    assert "-0" not in documented.mbpoll_command.split()
    assert documented.mbpoll_reference == documented.pdu_address + 1
    assert f"-r {documented.mbpoll_reference}" in documented.mbpoll_command


async def test_mbpoll_reads_forward_power(rig: Rig) -> None:
    require_tool("mbpoll", package="mbpoll")
    mbpoll = find_tool("mbpoll")
    assert mbpoll is not None
    documented = documented_forward_power()
    await _rf_on_at_power(rig)
    command = (documented.mbpoll_command
               .replace("<port>", str(rig.rf_bus.port)).replace("<host>", HOST)).split()
    assert command[0] == "mbpoll"
    assert "<" not in " ".join(command), command
    # The bus server lives on this event loop: run mbpoll without blocking it.
    process = await asyncio.create_subprocess_exec(
        mbpoll, *command[1:], stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    output = stdout.decode()
    assert process.returncode == 0, output + stderr.decode()
    values = {int(ref): int(value)
              for ref, value in re.findall(r"^\[(\d+)\]:\s+(-?\d+)\s*$", output, re.MULTILINE)}
    assert values == {documented.mbpoll_reference: round(POWER_KW * 10)}, output


async def test_bare_pymodbus_client_reads_forward_power(rig: Rig) -> None:
    documented = documented_forward_power()
    await _rf_on_at_power(rig)
    client = AsyncModbusTcpClient(HOST, port=rig.rf_bus.port, timeout=5)
    try:
        assert await client.connect()
        response = await client.read_input_registers(
            documented.pdu_address, count=1, device_id=rig.unit
        )
    finally:
        client.close()
    assert not response.isError(), response
    assert response.registers == [round(POWER_KW * 10)]
