"""Serial bus utilisation: each simulated serial bus held to its baud rate, the controller
polling the whole line at its configured rates, and the share of each bus's time its frames
held it (``SerialWire.busy_s``), beside what the line configuration's poll plan predicts
(controller/config/bus_budget.py) and the bus's budget. Prints JSON.

    .venv/bin/python bench/bench_bus.py [--seconds 10]

Measured with the line idle (the pollers, the heartbeat and nothing else: the poll plan the
budget is about); each device's achieved poll rate is reported too, since a bus measured
below its plan may be one whose polls fell behind."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from bench.line_bench import bench_rig, machine_info
from controller.config.bus_budget import bus_load
from controller.config.logging_setup import configure_logging


async def main(seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with bench_rig(Path(tmp)) as (rig, _):
            line, health = rig.line, rig.sup.telemetry.health
            wires = {n: b.wire for n, b in rig.sim.buses.items() if b.wire is not None}
            busy = {n: w.busy_s for n, w in wires.items()}
            polls = {n: h.polls for n, h in health.items()}
            started = time.monotonic()
            await asyncio.sleep(seconds)
            elapsed = time.monotonic() - started
            buses: dict[str, Any] = {}
            for name, wire in wires.items():
                config = line.buses[name]
                buses[name] = {
                    "protocol": config.protocol, "baudrate": config.baudrate,
                    "measured_utilisation": round((wire.busy_s - busy[name]) / elapsed, 3),
                    "planned_utilisation": round(bus_load(name, config, line.devices.values()), 3),
                    "budget": config.budget_fraction,
                }
            rates = {n: {"configured_hz": line.devices[n].poll_hz,
                         "achieved_hz": round((h.polls - polls.get(n, 0)) / elapsed, 1)}
                     for n, h in health.items()}
    return {"benchmark": "bus", "machine": machine_info(), "seconds": round(elapsed, 2),
            "buses": buses, "poll_rates": rates}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    configure_logging(json=True, level="ERROR")
    print(json.dumps(asyncio.run(main(args.seconds)), indent=2))
