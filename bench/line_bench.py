"""What the whole-line benches share: the line rig of the system tests on a line configuration
of the bench's choosing (a faster safety poll, unthrottled buses), and a recorder on the
simulator's frame hooks that decodes the frames a trip is timed by.

Not a bench itself: bench_trip.py and bench_bus.py import it."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from controller.config.line import LineConfig, load_line_config
from controller.machine.devices import build_machine
from controller.records.run_records import RunRecords
from controller.run.process_clock import ProcessClock
from controller.run.supervisor import Supervisor
from drivers.codecs import rf_generator_map as rf_map
from drivers.codecs import safety_io_map as io_map
from simulators.line import LineSimulator
from tests.system.rig import TIME_SCALE, Rig, ready

MBAP_BYTES = 7  # Modbus TCP's header: transaction, protocol, length, unit
FC_READ_INPUT = 4
FC_WRITE_SINGLE = 6
FC_WRITE_MULTIPLE = 16
FC_WRITE_READ = 23


def machine_info() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def with_safety_hz(line: LineConfig, hz: float) -> LineConfig:
    devices = dict(line.devices)
    devices["safety_io"] = devices["safety_io"].model_copy(update={"poll_hz": hz})
    return line.model_copy(update={"devices": devices})


@dataclass(frozen=True)
class Frame:
    bus: str
    sending: bool  # True: the simulator's reply; False: a request it received
    data: bytes
    at: float  # monotonic: when it crossed the line


@dataclass
class FrameLog:
    """Every frame every bus carried, in the order the hooks saw them."""

    frames: list[Frame] = field(default_factory=list)

    def hook(self, bus: str, sending: bool, data: bytes, at: float) -> None:
        self.frames.append(Frame(bus, sending, data, at))

    def since(self, t: float) -> list[Frame]:
        return sorted((f for f in self.frames if f.at >= t), key=lambda f: f.at)

    def clear(self) -> None:
        self.frames.clear()


# -- decoding the frames a trip is timed by (Modbus TCP: MBAP, then the PDU) ---------------
def _fc(frame: Frame) -> int:
    return frame.data[MBAP_BYTES] if len(frame.data) > MBAP_BYTES else -1


def safety_inputs(frame: Frame) -> io_map.SafetyInputs | None:
    """The safety I/O's inputs a read reply carries, or None if it is another frame."""
    if not frame.sending or _fc(frame) not in (FC_READ_INPUT, FC_WRITE_READ):
        return None  # the poll's read, or the safety cycle's beat and read (the same reply)
    payload = frame.data[MBAP_BYTES + 2:]
    words = [int.from_bytes(payload[i:i + 2], "big") for i in range(0, len(payload), 2)]
    if len(words) != io_map.INPUT_COUNT:
        return None
    return io_map.decode_inputs(words)


def _single_write(frame: Frame) -> tuple[int, int] | None:
    if frame.sending or _fc(frame) != FC_WRITE_SINGLE:
        return None
    pdu = frame.data[MBAP_BYTES + 1:]
    return int.from_bytes(pdu[0:2], "big"), int.from_bytes(pdu[2:4], "big")


def is_rf_off(frame: Frame) -> bool:
    return frame.bus == "rf_link" and _single_write(frame) == (
        rf_map.HR_RF_COMMAND, rf_map.RF_COMMAND_OFF)


def outputs_written(frame: Frame) -> io_map.SafetyOutputs | None:
    write = _single_write(frame)
    if frame.bus != "io_link" or write is None or write[0] != io_map.HR_OUTPUTS:
        return None
    return io_map.decode_outputs(write[1])


def is_posture_write(frame: Frame, rtu_buses: set[str]) -> bool:
    """A write request the controller sent (the heartbeat and polls excluded)."""
    if frame.sending:
        return False
    if frame.bus in ("rf_link", "io_link"):
        return is_rf_off(frame) or outputs_written(frame) is not None
    if frame.bus in rtu_buses:  # RTU: unit, function code
        return len(frame.data) > 1 and frame.data[1] in (FC_WRITE_SINGLE, FC_WRITE_MULTIPLE)
    # ASCII: a poll is the unit letter alone (or the gauge's M); anything longer acts.
    return len(frame.data.rstrip(b"\r")) > 1


@asynccontextmanager
async def bench_rig(tmp_path: Path, line: LineConfig | None = None, *,
                    time_scale: float = TIME_SCALE) -> AsyncIterator[tuple[Rig, FrameLog]]:
    """The system tests' rig (tests/system/rig.py) on ``line``, its frame hooks recorded."""
    line = line or load_line_config()
    db = tmp_path / "records.sqlite3"
    frames = FrameLog()
    async with LineSimulator(line, time_scale=time_scale, serve_ptys=False) as sim:
        for bus in sim.buses.values():
            bus.frame_hooks.append(frames.hook)
            if bus.wire is not None:
                bus.wire.paced = True  # the benches measure the wire at its baud, at any scale
        machine = build_machine(line, sim.endpoints())
        async with RunRecords(db, line=line.line) as records:
            sup = Supervisor(machine, records, clock=ProcessClock(time_scale))
            async with sup:
                await ready(sup, "bench")
                yield Rig(line, sim, sup, records, db), frames
