"""One controller per line, at the machine (domain.md rule 8; docs/devices.md, the safety PLC's
line owner): the data dir's flock is per user and per PC, so the safety PLC itself holds the
line's owner, the id each controller sends with its heartbeat.

In process (two supervisors against one simulated line, on the wire): the second is refused
naming the owner and writes nothing but its beats; a controller whose heartbeat stopped loses
the line to a new one, raises an alarm and beats no more. As the line PC runs it (two
``povd serve`` against one ``povd-sim``, separate data dirs so the flock does not fire): the
second is refused and the first serves on; after the first is killed the second claims."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.config.line import load_line_config
from controller.machine.devices import Machine, build_machine
from controller.machine.polling import LineClaimRefused
from controller.records.run_records import RunRecords
from controller.run.supervisor import Supervisor
from drivers.codecs import safety_io_map as io_map
from drivers.codecs.safety_io_map import SafetyInputs, format_owner_id
from drivers.transports.endpoint import Endpoint
from drivers.transports.modbus import ModbusTransport
from tests.system.rig import Rig
from tests.system.sim_process import povd_sim, wait_until
from tests.waiting import eventually

pytestmark = pytest.mark.slow

STARTUP_S = 60.0  # a povd process: imports, links, the idle posture, on a slow machine
REQUESTS = ("read_holding", "read_input", "write_register", "write_registers",
            "write_sequence", "request")


def _spy_on_requests(machine: Machine) -> list[tuple[str, str, tuple[Any, ...]]]:
    """Every request each of the machine's transports is asked to make: (bus, method, args)."""
    calls: list[tuple[str, str, tuple[Any, ...]]] = []
    for bus, transport in machine.transports.items():
        for name in REQUESTS:
            method = getattr(transport, name, None)
            if method is None:
                continue

            def recorder(*args: Any, _method: Any = method, _name: str = name,
                         _bus: str = bus, **kwargs: Any) -> Any:
                calls.append((_bus, _name, args))
                return _method(*args, **kwargs)

            setattr(transport, name, recorder)
    return calls


def _second_controller(rig: Rig, tmp_path: Path) -> tuple[Supervisor, RunRecords, Machine]:
    machine = build_machine(rig.line, rig.sim.endpoints())
    records = RunRecords(tmp_path / "second.sqlite3", line=rig.line.line)
    return Supervisor(machine, records, link_wait_s=15), records, machine


async def test_a_second_controller_is_refused_names_the_owner_and_writes_nothing(
    rig: Rig, tmp_path: Path
) -> None:
    first_id = rig.sup.machine.safety_io.owner_id
    second, records, machine = _second_controller(rig, tmp_path)
    requests = _spy_on_requests(machine)
    async with records:
        with pytest.raises(LineClaimRefused) as refused:
            async with second:
                pytest.fail("the second controller started")
    assert str(refused.value) == (f"{rig.line.line} is controlled by another controller "
                                  f"(owner {format_owner_id(first_id)}); stop it first")
    assert refused.value.owner == first_id
    # Only its beats and its reads of the safety I/O reached the wire: no output, no setpoint.
    io_bus = rig.line.devices["safety_io"].bus
    assert requests and {(bus, name) for bus, name, _ in requests} == {
        (io_bus, "write_registers"), (io_bus, "read_input")}
    assert {args[1] for _, name, args in requests if name == "write_registers"} == {
        io_map.HR_BEAT_OWNER}
    # The first controller runs on, still the owner, its heartbeat alive, and it has seen the
    # attempt.
    inputs = await eventually(rig.sup.machine.safety_io.read,
                              lambda i: i.refused_owner == machine.safety_io.owner_id,
                              what="the refused id at the PLC")
    assert inputs.line_owner == first_id and inputs.heartbeat_ok
    assert not inputs.heartbeat_latched
    assert not rig.sup.alarms.status("line_claim_lost").condition
    assert rig.sup.start_blockers() == []


async def test_a_stopped_heartbeat_loses_the_line_to_a_new_controller(
    rig: Rig, tmp_path: Path
) -> None:
    first = rig.sup
    first.reactions.heartbeat_enabled = False  # as a stalled controller: no more beats
    second, records, machine = _second_controller(rig, tmp_path)
    async with records, second:
        # The claim waited for the first one's heartbeat to be lost, then took the line.
        assert await second.wait_links() == []
        await second.make_idle("second")
        assert "heartbeat_latch" in await second.reset_controller_loss("bob")
        inputs = await eventually(machine.safety_io.read,
                                  lambda i: i.heartbeat_ok and not i.heartbeat_latched,
                                  what="the second controller's heartbeat")
        assert inputs.line_owner == machine.safety_io.owner_id
        await rig.wait_for(lambda: first.alarms.status("line_claim_lost").condition, 10,
                           "the first controller's line_claim_lost alarm")
        # The first one treats it as a heartbeat loss, and beats no more even when it could.
        assert "heartbeat_latched" in first.envelope_inputs().conditions
        first.reactions.heartbeat_enabled = True
        polls = first.telemetry.link("safety_io").polls
        beats = first._pollers.beats
        await rig.wait_for(lambda: first.telemetry.link("safety_io").polls > polls + 20, 10,
                           "twenty more safety cycles of the first controller")
        assert first._pollers.beats == beats
        inputs = await machine.safety_io.read()
        assert inputs.line_owner == machine.safety_io.owner_id and inputs.heartbeat_ok


async def test_no_answer_from_the_safety_io_refuses_the_claim(tmp_path: Path) -> None:
    line = load_line_config()
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoints = {"devices": {name: {"host": "127.0.0.1", "port": port}
                             for name in line.devices}}
    machine = build_machine(line, endpoints)
    requests = _spy_on_requests(machine)
    async with RunRecords(tmp_path / "records.sqlite3", line=line.line) as records:
        with pytest.raises(LineClaimRefused, match="line1 cannot be claimed at its safety I/O"):
            async with Supervisor(machine, records, link_wait_s=0.5):
                pytest.fail("started without a claim")
    io_bus = line.devices["safety_io"].bus
    assert requests and {(bus, name) for bus, name, _ in requests} == {
        (io_bus, "write_registers")}  # the beat was tried, and nothing else


# -- as the line PC runs it: two `povd serve`, one `povd-sim` ---------------------------------
@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Path]:
    with povd_sim(tmp_path, time_scale=50) as endpoints:
        yield endpoints


def _serve(tmp_path: Path, name: str, endpoints: Path) -> tuple[subprocess.Popen[str], Path]:
    url_file = tmp_path / f"{name}.url"
    err = (tmp_path / f"{name}.err").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli.main", "--data-dir", str(tmp_path / name),
         "serve", "--endpoints", str(endpoints), "--http", "127.0.0.1:0",
         "--url-file", str(url_file)],
        stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, text=True,
    )
    err.close()
    return proc, url_file


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        proc.wait(timeout=30)


def _plc_inputs(endpoints: Path) -> SafetyInputs:
    """The safety PLC's inputs, read the way any Modbus client would (a read writes nothing)."""
    device = json.loads(endpoints.read_text())["devices"]["safety_io"]

    async def read() -> SafetyInputs:
        transport = ModbusTransport(
            "probe", Endpoint("modbus-tcp", host=device["host"], port=device["port"]),
            timeout_s=1.0)
        try:
            words = await transport.read_input(device["unit"], io_map.IR_DIGITAL,
                                               io_map.INPUT_COUNT)
        finally:
            await transport.close()
        return io_map.decode_inputs(words)

    return asyncio.run(read())


def test_two_serves_on_one_line_the_second_is_refused_until_the_first_dies(
    tmp_path: Path, simulator: Path
) -> None:
    first, first_url = _serve(tmp_path, "first", simulator)
    second: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: first_url.exists() or first.poll() is not None, STARTUP_S,
              "the first controller's URL")
        assert first.poll() is None, (tmp_path / "first.err").read_text()[-3000:]
        owner = _plc_inputs(simulator).line_owner
        assert owner != io_map.NO_OWNER

        second, second_url = _serve(tmp_path, "second", simulator)
        assert second.wait(timeout=STARTUP_S) == 3  # refused
        message = (tmp_path / "second.err").read_text()
        assert ("refused: line1 is controlled by another controller "
                f"(owner {format_owner_id(owner)}); stop it first") in message, message
        assert not second_url.exists()
        assert first.poll() is None  # the first serves on, still the owner, its beats alive
        inputs = _plc_inputs(simulator)
        assert inputs.line_owner == owner and inputs.heartbeat_ok

        _stop(first, signal.SIGKILL)  # dies: its heartbeat stops, the PLC latches the loss
        second, second_url = _serve(tmp_path, "second", simulator)
        wait_until(lambda: second_url.exists() or second.poll() is not None, STARTUP_S,
              "the second controller's URL")
        assert second.poll() is None, (tmp_path / "second.err").read_text()[-3000:]
        inputs = _plc_inputs(simulator)
        assert inputs.line_owner not in (owner, io_map.NO_OWNER)
        # It reset the latch the dead controller left (a recorded reset at bring-up).
        assert inputs.heartbeat_ok and not inputs.heartbeat_latched
    finally:
        _stop(first)
        if second is not None:
            _stop(second)
