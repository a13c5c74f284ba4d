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
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from bench.line_bench import (
    Frame,
    FrameLog,
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
from controller.machine.devices import build_machine
from controller.recipes.loading import load_recipe
from controller.recipes.planning import plan_from_recipe
from controller.records.run_records import RunHeader, RunRecords
from controller.run.process_clock import ProcessClock
from controller.run.supervisor import Supervisor
from controller.safety.states import ACTIVE_STATES, State
from drivers.codecs.safety_io_map import SafetyInputs
from drivers.transports.modbus import ModbusTransport
from simulators.line import LineSimulator
from tests.system.rig import RECIPES, ready

SHOWS: dict[str, Callable[[SafetyInputs, SafetyIoConfig], bool]] = {
    "water_flow_low": lambda i, c: i.water_flow_l_min < c.water_flow_min_l_min,
    "exhaust_lost": lambda i, c: i.exhaust_draft_pa > c.exhaust_trip_pa,
    "gas_detector": lambda i, c: i.gas_detector_ppm >= c.gas_detector_trip_ppm,
}
IDLE_CPU_WINDOW_S = 3.0
# The simulator ticks every 10 ms wall; at x20 a tick is two 0.1 s physics sub-steps, cheap
# enough not to delay the frame stamps it takes between ticks, and a trip cycle (purge,
# ignition, the trip, clear) takes a few wall seconds.
TIME_SCALE = 20.0


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


class SimProcess:
    """povd-sim's line in a process of its own, as on the line PC (the controller's loop
    carries no simulator work, and the simulator's stamps are not delayed by the controller),
    its frame hooks recorded there on the same monotonic clock (CLOCK_MONOTONIC is the
    machine's). Commands, one JSON line each way over the child's stdin and stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    @classmethod
    async def start(cls, time_scale: float) -> tuple[SimProcess, dict[str, Any]]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--sim-child", "--time-scale", str(time_scale),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024)
        sim = cls(proc)
        endpoints = await sim._answer()
        return sim, endpoints

    async def _answer(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = await self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the simulator process ended")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def ask(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        await self._proc.stdin.drain()
        return await self._answer()

    async def frames(self) -> list[Frame]:
        answer = await self.ask("frames")
        return [Frame(bus, sending, bytes.fromhex(data), at)
                for bus, sending, data, at in answer["frames"]]

    async def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        await self._proc.wait()


async def sim_child(time_scale: float) -> None:
    """The simulator's side: the demo line at ``time_scale``, serial buses paced."""
    frames = FrameLog()
    async with LineSimulator(load_line_config(), time_scale=time_scale,
                             serve_ptys=False) as sim:
        for bus in sim.buses.values():
            bus.frame_hooks.append(frames.hook)
            if bus.wire is not None:
                bus.wire.paced = True
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        def answer(obj: dict[str, Any]) -> None:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

        answer(sim.endpoints())
        while line := await reader.readline():
            request = json.loads(line)
            cmd = request["cmd"]
            if cmd == "inject":
                last_reply = max((f.at for f in frames.frames
                                  if f.bus == "io_link" and f.sending), default=0.0)
                frames.clear()
                at = time.monotonic()
                sim.faults.inject("safety_io", request["fault"])
                answer({"at": at, "last_io_reply": last_reply})
            elif cmd == "frames":
                answer({"frames": [(f.bus, f.sending, f.data.hex(), f.at)
                                   for f in frames.frames]})
            elif cmd == "clear":
                sim.faults.clear()
                frames.clear()
                answer({})
            elif cmd == "rf_on":
                answer({"rf_on": sim.plant.rf_on})
            elif cmd == "cpu":
                answer({"cpu_s": time.process_time()})


# The controller's own side of the wire: pymodbus calls its client's trace_packet hook just
# before it writes a request and as a reply's bytes arrive, so these stamps split a reaction
# into the controller's share (reply in -> RF-off requests out) and the simulator's and the
# kernel's (the frame hooks' stamps are taken by another process, which may be busy).
CONTROLLER_FRAMES = FrameLog()


def stamp_controller_frames() -> None:
    """Both links of a Modbus TCP device: the link and its urgent link (an RF off that passes
    a poll in flight goes out on the second)."""
    for hook in ("_trace_packet", "_trace_urgent_packet"):
        traced = getattr(ModbusTransport, hook)

        def stamped(transport: ModbusTransport, sending: bool, data: bytes,
                    traced: Callable[[ModbusTransport, bool, bytes], bytes] = traced) -> bytes:
            # Frame.sending is the simulator's side: a request the controller sends is not.
            CONTROLLER_FRAMES.hook(transport.name, not sending, bytes(data), time.monotonic())
            return traced(transport, sending, data)

        setattr(ModbusTransport, hook, stamped)


@dataclass
class Controller:
    line: LineConfig
    sup: Supervisor
    sim: SimProcess

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; "
                                     f"state {self.sup.sm.state.value}")
            await asyncio.sleep(0.01)

    async def start(self) -> bool:
        loaded = load_recipe(RECIPES / "quick.yaml", self.line)
        header = RunHeader(recipe_name=loaded.name, recipe_text=loaded.text,
                           line=self.line.line, machine=self.line.machine, operator="bench",
                           preform_serial="B-1")
        result = await self.sup.command("start", "bench",
                                        plan=plan_from_recipe(loaded, self.line), header=header)
        return result.accepted


@asynccontextmanager
async def controller(tmp_path: Path, line: LineConfig,
                     time_scale: float) -> AsyncIterator[Controller]:
    sim, endpoints = await SimProcess.start(time_scale)
    stamp_controller_frames()
    try:
        machine = build_machine(line, endpoints)
        async with RunRecords(tmp_path / "records.sqlite3", line=line.line) as records:
            sup = Supervisor(machine, records, clock=ProcessClock(time_scale))
            async with sup:
                await ready(sup, "bench")
                yield Controller(line, sup, sim)
    finally:
        await sim.close()


def in_flight_at(frames: list[Frame], bus: str, at: float) -> bool:
    """Whether a request on ``bus`` was awaiting its reply at ``at``."""
    last = next((f for f in reversed(frames) if f.bus == bus and f.at <= at), None)
    return last is not None and not last.sending


def rf_reads_on(ctl: Controller) -> bool:
    rf = ctl.sup.telemetry.rf
    return rf is not None and rf.rf_on


async def start_run(ctl: Controller, fault: str) -> list[str]:
    """Start a run and wait for the RF to be on; a run that ends before (a loaded machine can
    starve the heartbeat) is cleared and started again. Returns why each one lost so ended
    (the cause of its abort, or its state if it did not abort)."""
    lost: list[str] = []
    while True:
        deadline = time.monotonic() + 60
        while not await ctl.start():
            if time.monotonic() > deadline:
                raise AssertionError(f"start refused: {ctl.sup.start_blockers()}")
            await asyncio.sleep(0.05)
        await ctl.wait_for(lambda: rf_reads_on(ctl) or ctl.sup.sm.state is State.ABORTED,
                           60, "RF on")
        if (await ctl.sim.ask("rf_on"))["rf_on"] and ctl.sup.sm.state is not State.ABORTED:
            return lost
        lost.append(abort_cause(ctl))
        await back_to_idle(ctl, fault)


def abort_cause(ctl: Controller) -> str:
    aborts = [t for t in ctl.sup.sm.history if t.to_state is State.ABORTING]
    if ctl.sup.sm.state is not State.ABORTED or not aborts:
        return f"not aborted: {ctl.sup.sm.state.value}"
    return aborts[-1].cause or aborts[-1].command.value


async def back_to_idle(ctl: Controller, fault: str) -> None:
    """Faults cleared, and the run (tripped, or lost before the RF came on and perhaps still
    going) ended and reset: the line Idle for the next start."""
    await ctl.sim.ask("clear")
    await ctl.wait_for(lambda: ctl.sup.link_alive("safety_io"), 15, "link back")
    deadline = time.monotonic() + 60
    while (state := ctl.sup.sm.state) is not State.IDLE:
        if time.monotonic() > deadline:
            raise AssertionError(f"{fault}: the line would not come back to Idle ({state})")
        if state is State.ABORTED:
            await ctl.sup.command("clear", "bench")
        elif state in (State.STOPPED, State.COMPLETE):
            await ctl.sup.command("reset", "bench")
        elif state in ACTIVE_STATES and state is not State.ABORTING:
            await ctl.sup.command("abort", "bench")
        await asyncio.sleep(0.05)


async def one_trip(ctl: Controller, fault: str, period_s: float,
                   rng: random.Random) -> dict[str, Any]:
    line, io_config = ctl.line, ctl.line.safety_io()
    lost_starts = await start_run(ctl, fault)
    await asyncio.sleep(rng.uniform(0.0, 0.3))  # somewhere in ignition or the ramp
    await asyncio.sleep(rng.uniform(0.0, period_s))  # and anywhere in the poll's phase
    judged: list[float] = []
    begin_trip = ctl.sup.reactions.begin_trip

    def timed_begin_trip(interlock: Any, detected_at: float) -> None:
        judged.append(detected_at)
        begin_trip(interlock, detected_at)
        judged.append(time.monotonic())

    ctl.sup.reactions.begin_trip = timed_begin_trip  # type: ignore[method-assign]
    CONTROLLER_FRAMES.clear()
    injection = await ctl.sim.ask("inject", fault=fault)
    injected = float(injection["at"])
    await ctl.wait_for(lambda: ctl.sup.sm.state is State.ABORTED, 20, "Aborted")
    ctl.sup.reactions.begin_trip = begin_trip  # type: ignore[method-assign]
    seen = sorted(await ctl.sim.frames(), key=lambda f: f.at)
    detect = next(f for f in seen if f.bus == "io_link"
                  and (inputs := safety_inputs(f)) is not None and SHOWS[fault](inputs, io_config))
    after = [f for f in seen if f.at >= detect.at]
    rf_off = next(f for f in after if is_rf_off(f))
    permit = next(f for f in after if (o := outputs_written(f)) is not None and not o.rf_permit)
    ours = CONTROLLER_FRAMES.since(injected)
    # The same reply as the simulator's (its transaction id makes it unique): the two
    # processes' stamps of one frame may come in either order.
    reply_in = next(f.at for f in ours if f.bus == "io_link" and f.data == detect.data)
    rf_out = next(f.at for f in ours if is_rf_off(f))
    plc_out = next(f.at for f in ours if (o := outputs_written(f)) is not None
                   and not o.rf_permit)
    trip: dict[str, Any] = {
        "phase": ((injected - float(injection["last_io_reply"])) / period_s) % 1.0,
        # A poll of the RF generator in flight when the condition showed: its reply comes
        # before the RF-off request may use the link.
        "rf_poll_in_flight": in_flight_at(seen, "rf_link", detect.at),
        # Inside the controller, from the reply's arrival: its judgement began, and the
        # trip's writes were launched (the judgement's reaction returned).
        "controller_rf_off_frames_ms": (max(rf_out, plc_out) - reply_in) * 1000,
        "controller_rf_generator_off_ms": (rf_out - reply_in) * 1000,
        "judged_ms": (judged[0] - reply_in) * 1000 if judged else None,
        "launched_ms": (judged[1] - reply_in) * 1000 if judged else None,
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
    await back_to_idle(ctl, fault)
    return trip


async def idle_cpu(sim: SimProcess, seconds: float) -> dict[str, float]:
    """CPU seconds per wall second while idle: the controller's process and the simulator's."""
    cpu, sim_cpu, wall = time.process_time(), (await sim.ask("cpu"))["cpu_s"], time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - wall
    return {"controller": round((time.process_time() - cpu) / elapsed, 4),
            "simulator": round(((await sim.ask("cpu"))["cpu_s"] - sim_cpu) / elapsed, 4)}


def summarise(line: LineConfig, trips: list[dict[str, Any]], period_ms: float) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, bar in (("rf_off_frames_ms", 1.0), ("rf_generator_off_ms", 1.0),
                     ("controller_rf_off_frames_ms", 1.0),
                     ("controller_rf_generator_off_ms", 1.0),
                     ("plc_writes_ms", period_ms), ("end_to_end_ms", 2 * period_ms)):
        figures = stats([t[key] for t in trips])
        result[key] = {**figures, "bar_p99": bar, "met": figures["p99"] <= bar}
    causes = [cause for t in trips for cause in t["lost_starts"]]
    result["runs_lost_before_rf_on"] = {"count": len(causes),
                                        "causes": dict(Counter(causes).most_common())}
    # The trips whose RF off found a poll of the generator in flight (the urgent link's case).
    passing = [t["controller_rf_generator_off_ms"] for t in trips if t["rf_poll_in_flight"]]
    result["rf_poll_in_flight"] = {"trips": len(passing),
                                   "controller_rf_generator_off_ms":
                                       stats(passing) if passing else None}
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


def without_urgent_links(line: LineConfig) -> LineConfig:
    """The line as one whose Modbus TCP devices take one connection (the A/B's other side)."""
    buses = {name: bus.model_copy(update={"urgent_link": False})
             if bus.protocol == "modbus-tcp" else bus for name, bus in line.buses.items()}
    return line.model_copy(update={"buses": buses})


async def main(trips: int, fault: str, safety_hz: float, seed: int,
               time_scale: float, *, urgent_links: bool = True) -> dict[str, Any]:
    line = with_safety_hz(load_line_config(), safety_hz)
    if not urgent_links:
        line = without_urgent_links(line)
    period_s = 1.0 / safety_hz
    rng = random.Random(seed)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        async with controller(Path(tmp), line, time_scale) as ctl:
            cpu = await idle_cpu(ctl.sim, IDLE_CPU_WINDOW_S)
            samples = [await one_trip(ctl, fault, period_s, rng) for _ in range(trips)]
    load_after = os.getloadavg()
    return {"benchmark": "trip", "machine": machine_info(), "fault": fault, "trips": trips,
            "load_average_before": load_before, "load_average_after": load_after,
            "safety_poll_hz": safety_hz, "seed": seed, "time_scale": time_scale,
            "urgent_links": urgent_links,
            "idle_cpu_share_of_one_core": cpu,
            **summarise(line, samples, period_s * 1000),
            "per_trip": [{k: (round(v, 3) if isinstance(v, float) else v)
                          for k, v in t.items() if k != "posture"} for t in samples]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trips", type=int, default=200)
    parser.add_argument("--fault", default="water_flow_low", choices=sorted(SHOWS))
    parser.add_argument("--safety-hz", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-scale", type=float, default=TIME_SCALE,
                        help="process time per wall second (the trips are timed in wall time)")
    parser.add_argument("--no-urgent-links", action="store_true",
                        help="Modbus TCP devices on one connection each (the A/B's other side)")
    parser.add_argument("--sim-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging(json=True, level="ERROR")
    if args.sim_child:
        asyncio.run(sim_child(args.time_scale))
    else:
        result = asyncio.run(main(args.trips, args.fault, args.safety_hz, args.seed,
                                  args.time_scale, urgent_links=not args.no_urgent_links))
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
