"""Wire benchmark: requests per second and latency percentiles of each driver's ``read()``
against the in-process simulated line, over loopback TCP and over the pseudo-terminals.

    .venv/bin/python bench/bench_wire.py [--reads N] [--rounds N]

Prints one JSON document. The simulator and the drivers share one event loop and one core
(as in the integration tests), so the figures are an upper bound on what a client sees from
a separate povd-sim process only when that process has a core of its own. Not run by pytest."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from controller.config.line import load_line_config
from controller.config.logging_setup import configure_logging
from controller.machine.devices import Machine, build_machine
from simulators.line import LineSimulator

SERIAL_PROTOCOLS = ("modbus-rtu", "alicat-ascii", "ascii")
WARM_UP_READS = 10
Read = Callable[[], Awaitable[object]]


def readers(machine: Machine) -> dict[str, Read]:
    """Every device's read(), by device name."""
    reads: dict[str, Read] = {"rf": machine.rf.read, "safety_io": machine.safety_io.read}
    reads.update({name: mfc.read for name, mfc in machine.mfcs.items()})
    reads.update({name: axis.read for name, axis in machine.axes.items()})
    reads["diameter_gauge"] = machine.gauge.read
    return reads


def summary(latencies_s: list[float], elapsed_s: float) -> dict[str, float]:
    cuts = statistics.quantiles(latencies_s, n=100, method="inclusive")
    return {
        "requests": len(latencies_s),
        "requests_per_s": round(len(latencies_s) / elapsed_s, 1),
        "p50_ms": round(cuts[49] * 1000, 3),
        "p90_ms": round(cuts[89] * 1000, 3),
        "p99_ms": round(cuts[98] * 1000, 3),
        "max_ms": round(max(latencies_s) * 1000, 3),
    }


async def time_calls(call: Read, count: int) -> dict[str, float]:
    for _ in range(WARM_UP_READS):
        await call()  # connects, and fills caches on both ends
    latencies: list[float] = []
    started = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - t0)
    return summary(latencies, time.perf_counter() - started)


async def bench_path(
    sim: LineSimulator, path: str, reads: int, rounds: int
) -> list[dict[str, Any]]:
    machine = build_machine(sim.line, sim.endpoints(), prefer_pty=path == "pty")
    results: list[dict[str, Any]] = []
    try:
        for name, read in readers(machine).items():
            bus = sim.line.devices[name].bus
            protocol = sim.line.buses[bus].protocol
            if path == "pty" and protocol not in SERIAL_PROTOCOLS:
                continue  # a Modbus TCP device has no serial path
            stats = await time_calls(read, reads)
            results.append({"path": path, "device": name, "bus": bus, "protocol": protocol,
                            **stats})

        # One poll round of the whole line: every device read concurrently, as a poller does;
        # devices sharing a bus queue behind its lock.
        every = list(readers(machine).values())

        async def round_() -> None:
            await asyncio.gather(*(read() for read in every))

        stats = await time_calls(round_, rounds)
        results.append({"path": path, "device": "whole_line_round", "bus": "*",
                        "protocol": "*", **stats})
    finally:
        await machine.close()
    return results


async def main(reads: int, rounds: int) -> dict[str, Any]:
    async with LineSimulator(load_line_config(), time_scale=1.0, serve_ptys=True) as sim:
        results = []
        for path in ("tcp", "pty"):
            results += await bench_path(sim, path, reads, rounds)
    return {
        "benchmark": "wire",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "reads_per_device": reads,
        "whole_line_rounds": rounds,
        "results": results,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    configure_logging(json=True, level="WARNING")
    print(json.dumps(asyncio.run(main(args.reads, args.rounds)), indent=2))
