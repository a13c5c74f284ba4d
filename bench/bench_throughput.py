"""Wire throughput of our device layer against a bare client, same simulator, same run: reads
per second of our transport + driver vs a bare pymodbus client loop (Modbus TCP: the RF
generator; RTU framing over TCP: a drive), and of our ASCII MFC path vs a bare asyncio-streams
loop (an Alicat poll). The serial buses are unthrottled for this (``SerialWire.paced = False``):
it measures the software, not the baud rate. Prints JSON.

    .venv/bin/python bench/bench_throughput.py [--reads 500] [--rounds 7]

The two sides alternate, round after round (ours, bare, ours, bare...), each round ``--reads``
sequential reads after a warm-up; the ratio ours/bare is taken per round and its median
reported, so the machine's drifting speed falls on both sides alike. Bar: ratio >= 0.9."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerType

from bench.line_bench import machine_info
from controller.config.line import load_line_config
from controller.config.logging_setup import configure_logging
from controller.machine.devices import build_machine
from drivers.codecs import alicat_ascii, servo_map
from drivers.codecs import rf_generator_map as rf_map
from simulators.line import LineSimulator

WARM_UP = 20
BAR = 0.9
Read = Callable[[], Awaitable[object]]


async def rate(read: Read, reads: int) -> float:
    for _ in range(WARM_UP):
        await read()
    started = time.perf_counter()
    for _ in range(reads):
        await read()
    return reads / (time.perf_counter() - started)


async def compare(ours: Read, bare: Read, reads: int, rounds: int) -> dict[str, Any]:
    ratios, ours_rates, bare_rates = [], [], []
    for _ in range(rounds):
        a = await rate(ours, reads)
        b = await rate(bare, reads)
        ours_rates.append(a)
        bare_rates.append(b)
        ratios.append(a / b)
    ratio = statistics.median(ratios)
    return {"ours_reads_per_s": round(statistics.median(ours_rates), 1),
            "bare_reads_per_s": round(statistics.median(bare_rates), 1),
            "ratio_median": round(ratio, 3), "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3), "bar": BAR, "met": ratio >= BAR}


def _pymodbus(host: str, port: int, framer: FramerType) -> AsyncModbusTcpClient:
    return AsyncModbusTcpClient(host, port=port, framer=framer, timeout=1.0, retries=0)


async def main(reads: int, rounds: int) -> dict[str, Any]:
    line = load_line_config()
    results: dict[str, Any] = {}
    async with LineSimulator(line, time_scale=1.0, serve_ptys=False) as sim:
        for bus in sim.buses.values():
            if bus.wire is not None:
                bus.wire.paced = False  # the software's throughput, not the baud rate's
        endpoints = sim.endpoints()["devices"]
        machine = build_machine(line, sim.endpoints())
        try:
            rf_ep, drive_ep, mfc_ep = (endpoints[n] for n in ("rf", "carriage", "mfc_ar"))
            rf_client = _pymodbus(rf_ep["host"], rf_ep["port"], FramerType.SOCKET)
            drive_client = _pymodbus(drive_ep["host"], drive_ep["port"], FramerType.RTU)
            await rf_client.connect()
            await drive_client.connect()
            rf_unit, drive_unit = line.rf().unit, line.axis("carriage").unit

            async def bare_rf() -> object:
                # The same request the driver's read() makes: the status block.
                return (await rf_client.read_input_registers(
                    rf_map.IR_STATUS, count=rf_map.IR_SETPOINT_ACTUAL + 1,
                    device_id=rf_unit)).registers

            async def bare_drive() -> object:
                return (await drive_client.read_input_registers(
                    servo_map.IR_STATUS, count=servo_map.INPUT_COUNT,
                    device_id=drive_unit)).registers

            reader, writer = await asyncio.open_connection(mfc_ep["host"], mfc_ep["port"])
            poll = (alicat_ascii.poll(str(line.mfc("mfc_ar").unit)) + "\r").encode("ascii")

            async def bare_mfc() -> object:
                writer.write(poll)
                return await reader.readuntil(b"\r")

            results["modbus_tcp_rf"] = await compare(machine.rf.read, bare_rf, reads, rounds)
            results["modbus_rtu_over_tcp_drive"] = await compare(
                machine.axes["carriage"].read, bare_drive, reads, rounds)
            results["alicat_ascii_mfc"] = await compare(
                machine.mfcs["mfc_ar"].read, bare_mfc, reads, rounds)
            rf_client.close()
            drive_client.close()
            writer.close()
        finally:
            await machine.close()
    return {"benchmark": "throughput", "machine": machine_info(), "reads_per_round": reads,
            "rounds": rounds, "results": results}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    configure_logging(json=True, level="WARNING")
    print(json.dumps(asyncio.run(main(args.reads, args.rounds)), indent=2))
