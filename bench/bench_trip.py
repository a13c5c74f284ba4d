"""Trip reaction: from an interlock condition appearing at the safety I/O to the RF generator
being off, measured on the whole line (in-process simulator on real sockets, real drivers,
the supervisor at its configured poll rates). Prints JSON.

    .venv/bin/python bench/bench_trip.py [--trips 10] [--fault water_flow_low]

The domain requirement is one safety-I/O poll period (10 ms at 100 Hz) from detection to the
RF-off write; from the fault's injection the figure also includes up to one poll period of
detection latency and the simulator's tick (10 ms)."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.config.logging_setup import configure_logging
from controller.safety.states import State
from tests.system.rig import line_rig


async def one_trip(fault: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with line_rig(Path(tmp)) as rig:
            assert (await rig.start("long")).accepted
            await rig.wait_depositing(passes_done=1)
            injected = time.monotonic()
            rig.sim.faults.inject("safety_io", fault)
            while rig.sim.plant.rf_on:
                await asyncio.sleep(0.0005)
            rf_off = time.monotonic()
            await rig.wait_state(State.ABORTED)
            aborted = time.monotonic()
            detect_to_write = rig.sup.reaction_latency_s[0] if rig.sup.reaction_latency_s else -1
            return {"inject_to_rf_off_ms": (rf_off - injected) * 1000,
                    "inject_to_aborted_ms": (aborted - injected) * 1000,
                    "detect_to_posture_done_ms": detect_to_write * 1000}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trips", type=int, default=10)
    parser.add_argument("--fault", default="water_flow_low")
    args = parser.parse_args()
    configure_logging(json=True, level="ERROR")
    samples = [await one_trip(args.fault) for _ in range(args.trips)]
    result: dict[str, object] = {"fault": args.fault, "trips": args.trips}
    for key in samples[0]:
        values = sorted(s[key] for s in samples)
        result[key] = {"median": round(statistics.median(values), 2),
                       "max": round(values[-1], 2), "min": round(values[0], 2)}
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
