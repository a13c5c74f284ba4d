"""The whole simulated line in-process: every endpoint of its endpoints document answers the
real drivers (over TCP and over the pseudo-terminals), the control channel injects and clears
faults, and the safety PLC's watchdog drops the RF enable without a heartbeat.

The simulator's own ticker runs (as in povd-sim); tests poll for outcomes with generous
deadlines rather than sleeping for a fixed time."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from controller.config.line import DEVICE_NAMES, LineConfig, load_line_config
from controller.machine.devices import Machine, build_machine
from drivers.errors import DeviceDisconnected
from simulators.control import control_request
from simulators.line import LineSimulator
from tests.waiting import answered, eventually

T = TypeVar("T")

TIME_SCALE = 10.0
DEADLINE_S = 15.0
PROTOCOLS = {"modbus-tcp", "modbus-rtu", "alicat-ascii", "ascii"}
SERIAL_PROTOCOLS = {"modbus-rtu", "alicat-ascii", "ascii"}


@pytest.fixture
async def sim() -> AsyncIterator[LineSimulator]:
    async with LineSimulator(load_line_config(), time_scale=TIME_SCALE, serve_ptys=True) as sim:
        yield sim


@pytest.fixture
async def machine(sim: LineSimulator) -> AsyncIterator[Machine]:
    machine = build_machine(sim.line, sim.endpoints())
    try:
        yield machine
    finally:
        await machine.close()


async def _control(sim: LineSimulator, request: dict[str, Any]) -> dict[str, Any]:
    return await control_request(sim.host, sim.control.port, request)


async def _raw_control(sim: LineSimulator, payload: bytes) -> dict[str, Any]:
    """Send bytes as they are (possibly not JSON) and read the one reply line."""
    reader, writer = await asyncio.open_connection(sim.host, sim.control.port)
    try:
        writer.write(payload)
        await writer.drain()
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), 5))
    finally:
        writer.close()
        await writer.wait_closed()
    return reply






async def _read_every_device(machine: Machine, line: LineConfig) -> None:
    rf = await machine.rf.read()
    assert rf.fault_code == 0
    assert rf.forward_kw == 0.0
    io = await machine.safety_io.read()
    assert io.estop_ok
    assert io.doors_closed
    for name, mfc in machine.mfcs.items():
        reading = await mfc.read()
        assert reading.mass_slpm == pytest.approx(0.0, abs=0.01), name
        assert reading.setpoint_slpm == 0.0, name
    for name, axis in machine.axes.items():
        status = await axis.read()
        assert not status.alarm, name
    gauge = await machine.gauge.read()
    assert gauge.valid
    assert gauge.diameter_mm == pytest.approx(line.geometry.bait_rod_diameter_mm, abs=0.1)


# -- endpoints ---------------------------------------------------------------------------------
async def test_endpoints_document_has_the_issue_shape(sim: LineSimulator) -> None:
    document = sim.endpoints()
    json.dumps(document)  # it is written to a file: it must serialise as it is
    assert document["time_scale"] == TIME_SCALE
    assert document["control"] == {"host": sim.host, "port": sim.control.port}
    assert set(document["devices"]) == set(DEVICE_NAMES)
    assert len(document["devices"]) == 11
    for name, entry in document["devices"].items():
        # The issue's keys; the document may add more (povd-sim adds each device's bus).
        assert {"protocol", "host", "port", "unit", "path"} <= set(entry), name
        config = sim.line.devices[name]
        protocol = entry["protocol"]
        assert protocol in PROTOCOLS, name
        assert protocol == sim.line.buses[config.bus].protocol, name
        assert isinstance(entry["host"], str), name
        assert isinstance(entry["port"], int), name
        assert entry["port"] > 0, name
        if protocol == "alicat-ascii":
            assert isinstance(entry["unit"], str), name
            assert len(entry["unit"]) == 1, name
            assert entry["unit"].isupper(), name
        elif protocol.startswith("modbus"):
            assert isinstance(entry["unit"], int), name
            assert not isinstance(entry["unit"], bool), name
        else:
            assert entry["unit"] is None, name  # a point-to-point ASCII line has no address
        if protocol in SERIAL_PROTOCOLS:
            assert isinstance(entry["path"], str), name
            assert entry["path"].startswith("/dev/"), name
        else:
            assert entry["path"] is None, name


async def test_without_ptys_serial_paths_are_null() -> None:
    async with LineSimulator(load_line_config(), serve_ptys=False) as sim:
        paths = {e["path"] for e in sim.endpoints()["devices"].values()}
    assert paths == {None}


async def test_every_device_answers_over_tcp(sim: LineSimulator, machine: Machine) -> None:
    await _read_every_device(machine, sim.line)


async def test_every_device_answers_over_ptys(sim: LineSimulator) -> None:
    machine = build_machine(sim.line, sim.endpoints(), prefer_pty=True)
    try:
        serial = {n: t for n, t in machine.transports.items()
                  if sim.line.buses[n].protocol in SERIAL_PROTOCOLS}
        assert serial
        assert all(t.endpoint.path for t in serial.values())
        await _read_every_device(machine, sim.line)
    finally:
        await machine.close()


# -- control channel ---------------------------------------------------------------------------
async def test_control_fault_faults_and_clear(sim: LineSimulator) -> None:
    assert await _control(sim, {"cmd": "ping"}) == {"ok": True}
    reply = await _control(sim, {"cmd": "fault", "device": "mfc_o2", "kind": "drift",
                                 "params": {"offset": 1.5}})
    assert reply == {"ok": True, "fault": {"device": "mfc_o2", "kind": "drift",
                                           "params": {"offset": 1.5}, "remaining_s": None}}
    await _control(sim, {"cmd": "fault", "device": "rf", "kind": "silent", "duration_s": 60})
    listed = (await _control(sim, {"cmd": "faults"}))["faults"]
    assert {(f["device"], f["kind"]) for f in listed} == {("mfc_o2", "drift"), ("rf", "silent")}
    assert sim.faults.is_active("rf", "silent")
    assert await _control(sim, {"cmd": "clear", "device": "rf", "kind": "silent"}) == {
        "ok": True, "cleared": 1}
    assert not sim.faults.is_active("rf", "silent")
    assert await _control(sim, {"cmd": "clear"}) == {"ok": True, "cleared": 1}
    assert (await _control(sim, {"cmd": "faults"}))["faults"] == []


async def test_control_plant_and_set(sim: LineSimulator) -> None:
    reply = await _control(sim, {"cmd": "plant"})
    assert reply["ok"] is True
    assert reply["time_scale"] == TIME_SCALE
    assert reply["plant"]["rod_diameter_mm"] == pytest.approx(30.0)
    assert await _control(sim, {"cmd": "set", "key": "rod_diameter_mm", "value": 42.5}) == {
        "ok": True}
    assert sim.plant.rod_diameter_mm == 42.5
    assert (await _control(sim, {"cmd": "plant"}))["plant"]["rod_diameter_mm"] == 42.5


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"cmd": "fault", "device": "toaster", "kind": "silent"}, "unknown device"),
        ({"cmd": "fault", "device": "rf", "kind": "meltdown"}, "unknown fault"),
        ({"cmd": "fault", "device": "rf", "kind": "silent", "duration_s": -1}, "positive"),
        ({"cmd": "fault", "device": "rf", "kind": "drift", "params": [1]}, "params"),
        ({"cmd": "fault", "device": "rf"}, "kind"),
        ({"cmd": "set", "key": "rf_on", "value": True}, "cannot set"),
        ({"cmd": "reboot"}, "unknown cmd"),
    ],
)
async def test_control_refuses_bad_requests(
    sim: LineSimulator, request_: dict[str, Any], error: str
) -> None:
    reply = await _control(sim, request_)
    assert reply["ok"] is False
    assert error in reply["error"]
    assert sim.faults.snapshot() == []


@pytest.mark.parametrize("payload", [b"{not json\n", b"[1, 2]\n", b"\xff\xfe\n"])
async def test_control_refuses_malformed_json(sim: LineSimulator, payload: bytes) -> None:
    reply = await _raw_control(sim, payload)
    assert reply["ok"] is False
    assert reply["error"]
    assert await _control(sim, {"cmd": "ping"}) == {"ok": True}  # the channel lives on


async def test_fault_with_duration_expires(sim: LineSimulator, machine: Machine) -> None:
    reply = await _control(sim, {"cmd": "fault", "device": "diameter_gauge",
                                 "kind": "gauge_invalid", "duration_s": 0.3})
    assert 0 < reply["fault"]["remaining_s"] <= 0.3
    assert not (await machine.gauge.read()).valid

    async def expired() -> bool:
        faults: list[Any] = (await _control(sim, {"cmd": "faults"}))["faults"]
        return not faults

    await eventually(expired, what="the fault to expire", timeout_s=DEADLINE_S)
    assert (await machine.gauge.read()).valid


# -- link faults and reconnect -----------------------------------------------------------------
async def test_disconnect_fault_then_reconnect(sim: LineSimulator) -> None:
    machine = build_machine(sim.line, sim.endpoints())
    try:
        rf_transport = machine.transports[sim.line.rf().bus]
        assert (await machine.rf.read()).fault_code == 0  # connected
        await _control(sim, {"cmd": "fault", "device": "rf", "kind": "disconnect"})
        bus = sim.buses[sim.line.rf().bus]

        async def bus_down() -> bool:
            return not bus.listening

        await eventually(bus_down, what="the RF bus server to stop listening", timeout_s=DEADLINE_S)
        with pytest.raises(DeviceDisconnected) as caught:
            await machine.rf.read()
        assert caught.value.device == rf_transport.name
        with pytest.raises(DeviceDisconnected):
            await machine.rf.read()  # stays down: refused or paced by the backoff
        await _control(sim, {"cmd": "clear", "device": "rf", "kind": "disconnect"})
        # The server restarts; the driver reconnects.
        status = await eventually(machine.rf.read, answered, timeout_s=DEADLINE_S)
        assert status.fault_code == 0
        assert rf_transport.connected
        # Devices on other buses were never affected.
        assert (await machine.safety_io.read()).estop_ok
    finally:
        await machine.close()


# -- heartbeat watchdog ------------------------------------------------------------------------
async def test_rf_enable_follows_the_heartbeat(sim: LineSimulator, machine: Machine) -> None:
    async def rf_enable() -> bool:
        snapshot = (await _control(sim, {"cmd": "plant"}))["plant"]
        return bool(snapshot["rf_enable"])

    assert not await rf_enable()  # no controller has beaten yet: RF is not enabled
    await machine.safety_io.set_output("rf_permit", True)

    async def beating() -> bool:
        await machine.safety_io.heartbeat()
        return await rf_enable()

    await eventually(beating, what="the RF enable with a live heartbeat", timeout_s=DEADLINE_S)
    assert (await machine.safety_io.read()).heartbeat_ok
    assert (await machine.rf.read()).ready

    async def dropped() -> bool:
        return not await rf_enable()

    # The controller stops beating: the PLC drops the enable after its wall-time timeout.
    stopped_at = time.monotonic()
    await eventually(dropped, what="the watchdog to drop the RF enable", timeout_s=DEADLINE_S)
    assert time.monotonic() - stopped_at >= sim.line.safety_io().heartbeat_timeout_s * 0.5
    inputs = await machine.safety_io.read()
    assert not inputs.heartbeat_ok
    assert not inputs.rf_enable
    assert inputs.heartbeat_latched
    status = await machine.rf.read()
    assert status.interlock_open
    assert not status.ready

    # Beats resuming do not clear the latch; a reset with beats arriving does.
    await eventually(beating_without_enable(machine, rf_enable), what="beats seen, still latched",
                     timeout_s=DEADLINE_S)
    assert (await machine.safety_io.read()).heartbeat_latched

    async def reset() -> bool:
        await machine.safety_io.heartbeat()
        await machine.safety_io.reset_heartbeat_latch()
        return await rf_enable()

    await eventually(reset, what="the latch reset to restore the RF enable", timeout_s=DEADLINE_S)
    assert not (await machine.safety_io.read()).heartbeat_latched


def beating_without_enable(
    machine: Machine, rf_enable: Callable[[], Awaitable[bool]]
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        await machine.safety_io.heartbeat()
        inputs = await machine.safety_io.read()
        return inputs.heartbeat_ok and not inputs.rf_enable and not await rf_enable()

    return check


async def test_o2_enrichment_fault_reads_at_the_room_o2_register(
    sim: LineSimulator, machine: Machine
) -> None:
    assert (await machine.safety_io.read()).room_o2_pct == pytest.approx(20.9)
    reply = await _control(
        sim, {"cmd": "fault", "device": "safety_io", "kind": "o2_enrichment"}
    )
    assert reply["ok"], reply

    async def enriched() -> bool:
        reading = (await machine.safety_io.read()).room_o2_pct
        return bool(reading == pytest.approx(25.0))  # trip 23.5 + 1.5 points

    await eventually(enriched, what="the room O2 reading of the fault", timeout_s=DEADLINE_S)
