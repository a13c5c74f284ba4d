"""The controller's footprint at the demo line's default poll rates, at x1, during deposition
(issue 12 item 5): CPU as a share of one core and RSS of the ``povd serve`` process (its
povd-sim child not counted), over ``--seconds`` of deposition. Prints JSON.

    .venv/bin/python bench/footprint.py [--seconds 60] [--profile FILE.html] [--loop uvloop]

``povd serve --sim --time-scale 1`` as installed (deploy/line-sim.yaml's rates: safety I/O
100 Hz, RF and drives 20 Hz, MFCs 10 Hz, gauge 50 Hz), a 40-pass recipe started over the API
and waited into deposition; then the process's own CPU time (/proc/<pid>/stat) over the
window, and its user and system shares. ``--profile FILE.html``: the controller profiles
itself over the window (pyinstrument, 1 ms samples; bench/serve_rig.py's probed child, its lag
probe included): the CPU figure then includes the profiler's, so only the profile counts from
such a run.
Bars: < 10 % of a core, < 100 MB."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from bench.line_bench import machine_info
from bench.serve_rig import (
    CLK_TCK,
    cpu_seconds,
    load_average,
    peak_rss_mb,
    rss_mb,
    run_state,
    serving,
    start_run_and_wait_deposition,
)

CPU_BAR_PCT = 10.0
RSS_BAR_MB = 100.0
SLICE_S = 10.0  # the window is reported in slices too, to show the spread


def user_system_seconds(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime


def measure(pid: int, seconds: float) -> dict[str, Any]:
    slices: list[float] = []
    (user0, system0), cpu0, wall0 = user_system_seconds(pid), cpu_seconds(pid), time.monotonic()
    cpu_prev, wall_prev = cpu0, wall0
    while (elapsed := time.monotonic() - wall0) < seconds:
        time.sleep(min(SLICE_S, seconds - elapsed))
        cpu_now, wall_now = cpu_seconds(pid), time.monotonic()
        slices.append(round(100 * (cpu_now - cpu_prev) / (wall_now - wall_prev), 1))
        cpu_prev, wall_prev = cpu_now, wall_now
    cpu_pct = 100 * (cpu_prev - cpu0) / (wall_prev - wall0)
    user, system = user_system_seconds(pid)
    rss = rss_mb(pid)
    return {"seconds": round(wall_prev - wall0, 1), "cpu_pct_of_one_core": round(cpu_pct, 1),
            "cpu_pct_per_slice": slices,
            "user_pct": round(100 * (user - user0) / (wall_prev - wall0), 1),
            "system_pct": round(100 * (system - system0) / (wall_prev - wall0), 1),
            "rss_mb": round(rss, 1),
            "peak_rss_mb": round(peak_rss_mb(pid), 1),
            "bars": {"cpu_pct": CPU_BAR_PCT, "rss_mb": RSS_BAR_MB},
            "met": cpu_pct < CPU_BAR_PCT and rss < RSS_BAR_MB}


def main(seconds: float, profile: Path | None, loop: str) -> dict[str, Any]:
    with serving(probed=False, profile=profile, loop=loop) as served:
        run = start_run_and_wait_deposition(served)
        load_before = load_average()
        if profile is not None:
            served.proc.send_signal(signal.SIGUSR2)  # the profile covers the window
        figures = measure(served.proc.pid, seconds)
        status = run_state(served)
        if profile is not None:
            served.stats()  # stops the profiler and writes the profile
        still_depositing = status["state"] == "Execute" and status["op"] == "deposit"
    return {"benchmark": "footprint", "machine": machine_info(), "time_scale": 1, "loop": loop,
            "run": run, "load_average_before": load_before, "load_average_after": load_average(),
            "still_depositing_at_end": still_depositing,
            "profiled": profile is not None, **figures}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the controller's event loop (uvloop: a trial of it)")
    args = parser.parse_args()
    print(json.dumps(main(args.seconds, args.profile, args.loop), indent=2))
