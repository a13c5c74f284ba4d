"""Simulation benchmark: simulated process seconds per wall second of ``LineSimulator.step``
for the whole line (every device simulator, then the plant), at the process step each time
scale gives the 10 ms ticker (dt = tick x scale).

    .venv/bin/python bench/bench_sim.py [--seconds S]

Two scenarios: ``idle`` (the line as povd-sim starts it) and ``depositing`` (brought there by
the real drivers over the wire: heartbeat, valves, gases, RF, spindle turning, carriage
traversing, torch slide at the nominal gap, plasma lit and glass growing). Prints one JSON
document. Not run by pytest."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from controller.config.line import load_line_config
from controller.config.logging_setup import configure_logging
from controller.machine.devices import Machine, build_machine
from drivers.safety_io import SafetyOutputs
from simulators.line import LineSimulator

TIME_SCALES = (1, 10, 50, 200)
SETUP_STEP_S = 0.1
SETUP_LIMIT_S = 600.0  # process seconds allowed to reach deposition
NOMINAL = {  # domain.md's nominal figures
    "mfc_o2": 80.0, "mfc_n2": 30.0, "mfc_ar": 30.0,
    "rf_ignition_kw": 12.0, "rf_run_kw": 50.0, "sicl4_g_min": 20.0,
    "spindle_rpm": 30.0, "traverse_mm_min": 150.0, "gap_mm": 30.0,
}


def measure(sim: LineSimulator, dt_s: float, seconds: float, wall: float) -> dict[str, float]:
    """Step flat out for about ``seconds`` of wall time. The wall time handed to the devices
    is frozen, so the heartbeat watchdog (which runs on wall time) does not trip meanwhile."""
    steps = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            sim.step(dt_s, wall)
        steps += 100
    elapsed = time.perf_counter() - started
    step_s = elapsed / steps
    return {
        "dt_s": dt_s,
        "steps": steps,
        "step_us": round(step_s * 1e6, 2),
        "steps_per_s": round(steps / elapsed),
        "process_s_per_wall_s": round(dt_s * steps / elapsed, 1),
        # At the ticker's 10 ms period, the share of one core the stepping takes.
        "cpu_share_at_tick": round(step_s / sim.tick_s, 4),
    }


def run_scenario(sim: LineSimulator, seconds: float) -> list[dict[str, Any]]:
    wall = sim.clock.wall()  # just after the last heartbeat, for every figure
    return [
        {"time_scale": scale, **measure(sim, sim.tick_s * scale, seconds, wall)}
        for scale in TIME_SCALES
    ]


async def advance_until(sim: LineSimulator, machine: Machine, done: Any, what: str) -> None:
    """Step the line (process time) until ``await done()`` holds, beating the heartbeat
    as a controller does: setup takes longer in wall time than the watchdog allows."""
    waited = 0.0
    while not await done():
        await machine.safety_io.heartbeat()
        sim.step(SETUP_STEP_S, sim.clock.wall())
        waited += SETUP_STEP_S
        if waited > SETUP_LIMIT_S:
            raise RuntimeError(f"never reached: {what}")


async def to_deposition(sim: LineSimulator, machine: Machine) -> None:
    """What a controller does to start a pass, in short."""
    io = machine.safety_io
    await io.heartbeat()
    await io.write_outputs(SafetyOutputs(gas_master_valve=True, precursor_valve=True,
                                         exhaust_fan=True, rf_permit=True))
    sim.step(SETUP_STEP_S, sim.clock.wall())  # the PLC sees the beat: RF enabled
    spindle, carriage, slide = (machine.axes[n] for n in ("spindle", "carriage", "torch_slide"))
    for axis in (spindle, carriage, slide):
        await axis.enable()
    await spindle.set_velocity(NOMINAL["spindle_rpm"])
    for axis in (carriage, slide):
        await axis.home()

    async def homed() -> bool:
        return all([(await carriage.read()).homed, (await slide.read()).homed])

    await advance_until(sim, machine, homed, "carriage and torch slide homed")
    geometry = sim.line.geometry
    slide_mm = NOMINAL["gap_mm"] + geometry.bait_rod_diameter_mm / 2 - (
        geometry.coil_to_axis_at_slide_zero_mm
    )
    await slide.move_absolute(slide_mm, sim.line.axis("torch_slide").max_speed)
    await carriage.move_absolute(geometry.turning_point_a_mm, sim.line.axis("carriage").max_speed)

    async def in_place() -> bool:
        return all([(await carriage.read()).in_position, (await slide.read()).in_position])

    await advance_until(sim, machine, in_place, "carriage at A, torch slide at the gap")
    for name in ("mfc_ar", "mfc_n2"):
        await machine.mfcs[name].set_flow_slpm(NOMINAL[name])
    await machine.rf.set_power_kw(NOMINAL["rf_ignition_kw"])
    await machine.rf.rf_on()

    async def lit() -> bool:
        return (await machine.rf.read()).plasma_lit

    await advance_until(sim, machine, lit, "plasma lit")
    await machine.mfcs["mfc_o2"].set_flow_slpm(NOMINAL["mfc_o2"])
    await machine.rf.set_power_kw(NOMINAL["rf_run_kw"])
    sicl4 = sim.line.mfc("mfc_sicl4").grams_per_min_per_slpm or 1.0
    await machine.mfcs["mfc_sicl4"].set_flow_slpm(NOMINAL["sicl4_g_min"] / sicl4)
    await carriage.move_absolute(geometry.turning_point_b_mm, NOMINAL["traverse_mm_min"])

    async def at_power() -> bool:
        return (await machine.rf.read()).forward_kw >= NOMINAL["rf_run_kw"]

    await advance_until(sim, machine, at_power, "RF at running power")
    await machine.safety_io.heartbeat()
    sim.step(SETUP_STEP_S, sim.clock.wall())  # stamp the last beat


async def main(seconds: float) -> dict[str, Any]:
    line = load_line_config()
    idle = LineSimulator(line, time_scale=1.0)  # constructed, never started: step() only
    results: dict[str, Any] = {"idle": run_scenario(idle, seconds)}
    async with LineSimulator(line, time_scale=1.0, serve_ptys=False) as sim:
        machine = build_machine(line, sim.endpoints())
        try:
            await to_deposition(sim, machine)
        finally:
            await machine.close()
        before = dict(sim.plant.snapshot())
        results["depositing"] = run_scenario(sim, seconds)
        after = sim.plant.snapshot()
    return {
        "benchmark": "sim",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "devices": len(line.devices),
        "tick_s": idle.tick_s,
        "results": results,
        "depositing_check": {
            "plasma_lit": after["plasma_lit"],
            "rf_forward_kw": before["rf_forward_kw"],
            "coil_gap_mm": before["coil_gap_mm"],
            "rod_diameter_mm": [before["rod_diameter_mm"], after["rod_diameter_mm"]],
            "deposited_g": after["deposited_g"],
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="wall seconds per figure")
    args = parser.parse_args()
    configure_logging(json=True, level="WARNING")
    print(json.dumps(asyncio.run(main(args.seconds)), indent=2))
