"""Trip reaction, as domain.md rule 7 defines it, timed at the simulator's frame hooks: the
whole line (in-process simulator on real sockets, serial buses held to their baud rates, real
drivers, the supervisor at its configured poll rates), one run after another, a trip injected
in each at a random point of the safety poll's phase. Prints JSON.

    .venv/bin/python bench/bench_trip.py [--trips 200] [--fault water_flow_low] [--safety-hz 100]

Per trip, from the frames the simulator's buses carried (FrameLog, bench/line_bench.py):
- detect: the first safety-I/O reply showing the condition (sent by the simulator);
- rf_off_frames: detect -> both RF-off frames received (the generator's RF off and the PLC's
  outputs word with the RF permit dropped, which also closes the precursor and master valves):
  bar p99 <= 1 ms;
- plc_writes: detect -> the PLC's outputs word received: bar one safety poll period;
- posture per bus: detect -> that bus's last posture write received, beside rule 7's bound
  (the exchange in flight plus the posture's own frames at the bus's baud rate);
- end_to_end: the input changing (the fault injected: the register shows it from then on) ->
  the RF-off frame received: bar p99 <= two poll periods;
- cpu: the process's CPU seconds per wall second while idle between trips (controller and
  simulator together: the cost of the safety poll's rate)."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from bench.line_bench import (
    Frame,
    FrameLog,
    bench_rig,
    is_posture_write,
    is_rf_off,
    machine_info,
    outputs_written,
    safety_inputs,
    with_safety_hz,
)
from controller.config.bus_budget import exchange_s, frame_s, poll_exchanges
from controller.config.line import LineConfig, SafetyIoConfig, load_line_config
from controller.config.logging_setup import configure_logging
from controller.safety.states import State
from drivers.codecs.safety_io_map import SafetyInputs
from tests.system.rig import Rig

SHOWS: dict[str, Callable[[SafetyInputs, SafetyIoConfig], bool]] = {
    "water_flow_low": lambda i, c: i.water_flow_l_min < c.water_flow_min_l_min,
    "exhaust_lost": lambda i, c: i.exhaust_draft_pa > c.exhaust_trip_pa,
    "gas_detector": lambda i, c: i.gas_detector_ppm >= c.gas_detector_trip_ppm,
}
IDLE_CPU_WINDOW_S = 3.0


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 \
        else [ordered[0]] * 99
    return {"n": len(ordered), "p50": round(cuts[49], 3), "p99": round(cuts[98], 3),
            "max": round(ordered[-1], 3)}


def in_flight_s(line: LineConfig, bus: str) -> float:
    """The longest exchange a poll puts on the bus: what a posture write may find in flight."""
    config = line.buses[bus]
    longest = 0.0
    for device in line.devices.values():
        if device.bus != bus:
            continue
        for exchange in poll_exchanges(device.kind, config.protocol,
                                       unit=getattr(device, "unit", None)):
            longest = max(longest, exchange_s(exchange, config.baudrate, config.protocol))
    return longest


def posture_on_bus(line: LineConfig, frames: list[Frame], bus: str,
                   detect: float) -> tuple[float, float] | None:
    """(detect -> the last posture write received, rule 7's bound for it), in ms."""
    rtu = {n for n, b in line.buses.items() if b.protocol == "modbus-rtu"}
    config = line.buses[bus]
    on_bus = [f for f in frames if f.bus == bus]
    writes = [i for i, f in enumerate(on_bus) if is_posture_write(f, rtu)]
    if not writes:
        return None
    if config.protocol not in ("modbus-rtu", "alicat-ascii", "ascii"):
        return (on_bus[writes[-1]].at - detect) * 1000, float("nan")
    # The frame in flight, then each earlier posture exchange, then the last request itself.
    bound = in_flight_s(line, bus)
    for i in writes[:-1]:
        reply = next((f for f in on_bus[i + 1:] if f.sending), None)
        bound += frame_s(len(on_bus[i].data), config.baudrate, config.protocol)
        if reply is not None:
            bound += frame_s(len(reply.data), config.baudrate, config.protocol)
    last = on_bus[writes[-1]]
    bound += len(last.data) * 10 / config.baudrate
    return (last.at - detect) * 1000, bound * 1000


async def start_run(rig: Rig, fault: str) -> int:
    """Start a run and wait for the RF to be on; a run that ends before (a loaded machine can
    starve the heartbeat) is cleared and started again. Returns how many were lost so."""
    lost = 0
    while True:
        deadline = time.monotonic() + 60
        while not (await rig.start("quick")).accepted:
            if time.monotonic() > deadline:
                raise AssertionError(f"start refused: {rig.sup.start_blockers()}")
            await asyncio.sleep(0.05)
        await rig.wait_for(lambda: rig.sim.plant.rf_on or rig.sup.sm.state is State.ABORTED,
                           60, "RF on")
        if rig.sim.plant.rf_on and rig.sup.sm.state is not State.ABORTED:
            return lost
        lost += 1
        await back_to_idle(rig, fault)


async def back_to_idle(rig: Rig, fault: str) -> None:
    rig.sim.faults.clear()
    await rig.wait_for(lambda: rig.sup.link_alive("safety_io"), 15, "link back")
    deadline = time.monotonic() + 30
    while rig.sup.sm.state is State.ABORTED:
        await rig.sup.command("clear", "bench")
        if time.monotonic() > deadline:
            raise AssertionError(f"{fault} would not clear")
        await asyncio.sleep(0.05)
    if rig.sup.sm.state is State.STOPPED:
        await rig.sup.command("reset", "bench")
    await rig.wait_state(State.IDLE)


async def one_trip(rig: Rig, frames: FrameLog, fault: str, period_s: float,
                   rng: random.Random) -> dict[str, Any]:
    line, io_config = rig.line, rig.line.safety_io()
    lost_starts = await start_run(rig, fault)
    await asyncio.sleep(rng.uniform(0.0, 0.3))  # somewhere in ignition or the ramp
    await asyncio.sleep(rng.uniform(0.0, period_s))  # and anywhere in the poll's phase
    frames.clear()
    injected = time.monotonic()
    rig.sim.faults.inject("safety_io", fault)
    await rig.wait_state(State.ABORTED, timeout_s=20)
    seen = frames.since(injected)
    detect = next(f for f in seen if f.bus == "io_link"
                  and (inputs := safety_inputs(f)) is not None and SHOWS[fault](inputs, io_config))
    after = [f for f in seen if f.at >= detect.at]
    rf_off = next(f for f in after if is_rf_off(f))
    permit = next(f for f in after if (o := outputs_written(f)) is not None and not o.rf_permit)
    last_reply = max((f.at for f in frames.frames if f.bus == "io_link" and f.sending
                      and f.at < injected), default=injected)
    trip: dict[str, Any] = {
        "phase": ((injected - last_reply) / period_s) % 1.0,
        "rf_off_frames_ms": (max(rf_off.at, permit.at) - detect.at) * 1000,
        "rf_generator_off_ms": (rf_off.at - detect.at) * 1000,
        "plc_writes_ms": (permit.at - detect.at) * 1000,
        "end_to_end_ms": (rf_off.at - injected) * 1000,
        "posture": {},
        "lost_starts": lost_starts,
    }
    for bus in line.buses:
        measured = posture_on_bus(line, after, bus, detect.at)
        if measured is not None:
            trip["posture"][bus] = measured
    await back_to_idle(rig, fault)
    return trip


async def idle_cpu(seconds: float) -> float:
    """CPU seconds per wall second of this process (controller and simulator) while idle."""
    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    return (time.process_time() - cpu) / (time.monotonic() - wall)


def summarise(line: LineConfig, trips: list[dict[str, Any]], period_ms: float) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, bar in (("rf_off_frames_ms", 1.0), ("rf_generator_off_ms", 1.0),
                     ("plc_writes_ms", period_ms), ("end_to_end_ms", 2 * period_ms)):
        figures = stats([t[key] for t in trips])
        result[key] = {**figures, "bar_p99": bar, "met": figures["p99"] <= bar}
    result["runs_lost_before_rf_on"] = sum(t["lost_starts"] for t in trips)
    phases = [t["phase"] for t in trips]
    result["phase_deciles"] = [sum(1 for p in phases if d / 10 <= p < (d + 1) / 10)
                               for d in range(10)]
    per_bus: dict[str, Any] = {}
    for bus, config in line.buses.items():
        pairs = [t["posture"][bus] for t in trips if bus in t["posture"]]
        if not pairs:
            continue
        measured = stats([m for m, _ in pairs])
        bounds = [b for _, b in pairs]
        entry: dict[str, Any] = {"protocol": config.protocol, "baudrate": config.baudrate,
                                 "posture_written_ms": measured}
        if config.protocol != "modbus-tcp":
            entry["rule7_bound_ms"] = stats(bounds)
            entry["within_bound_plus_1ms"] = sum(1 for m, b in pairs if m <= b + 1.0)
        per_bus[bus] = entry
    result["posture_per_bus"] = per_bus
    return result


async def main(trips: int, fault: str, safety_hz: float, seed: int) -> dict[str, Any]:
    line = with_safety_hz(load_line_config(), safety_hz)
    period_s = 1.0 / safety_hz
    rng = random.Random(seed)
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with bench_rig(Path(tmp), line) as (rig, frames):
            cpu = await idle_cpu(IDLE_CPU_WINDOW_S)
            for _ in range(trips):
                samples.append(await one_trip(rig, frames, fault, period_s, rng))
                frames.clear()
    return {"benchmark": "trip", "machine": machine_info(), "fault": fault, "trips": trips,
            "safety_poll_hz": safety_hz, "seed": seed,
            "idle_cpu_share_of_one_core": round(cpu, 4),
            **summarise(line, samples, period_s * 1000)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trips", type=int, default=200)
    parser.add_argument("--fault", default="water_flow_low", choices=sorted(SHOWS))
    parser.add_argument("--safety-hz", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    configure_logging(json=True, level="ERROR")
    result = asyncio.run(main(args.trips, args.fault, args.safety_hz, args.seed))
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
