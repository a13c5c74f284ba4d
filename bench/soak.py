"""Soak (issue 11): back-to-back recipes at a high time scale for DURATION wall seconds, with
seeded random faults and operator commands, while the controller's process is sampled.

    .venv/bin/python bench/soak.py DURATION [--seed 1] [--time-scale 200] [--svg FILE]
                                            [--csv FILE]

The controller (Supervisor, run records on disk) runs in this process, exactly as `povd run`
assembles it; the line is a separate `povd-sim`, so the figures are the controller's own:
- RSS (VmRSS), open file descriptors (/proc/self/fd), asyncio tasks, and the event loop's lag
  (a 50 ms sleep's overshoot, the worst per sampling period), every --sample-s;
- between runs, at Idle, the same three counts: a leak shows as growth from one idle to the next.
Each run takes a new bait rod (the simulator's rod reset to 30 mm), one of the shipped recipes,
and during it, at random: a flame-out, a lost gauge, a lost SiCl4 controller, a cooling-water
trip, a hold and an unhold, a power trim. A trip ends the run Aborted: the soak clears and
resets as an operator would (the commands are recorded). At the end every record is verified
(``verify_records``, what `povd runs verify` runs).

Prints one JSON document: the figures, the growth (least squares over the samples after a
warm-up: MB per wall hour and per 10 process hours), and what happened."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from controller.cli.records_commands import legal_transitions  # noqa: E402
from controller.config.line import LineConfig, load_line_config  # noqa: E402
from controller.config.logging_setup import configure_logging  # noqa: E402
from controller.machine.devices import build_machine, load_endpoints  # noqa: E402
from controller.recipes.loading import load_recipe  # noqa: E402
from controller.recipes.planning import plan_from_recipe  # noqa: E402
from controller.records.run_records import RunHeader, RunRecords  # noqa: E402
from controller.records.verify import verify_records  # noqa: E402
from controller.run.process_clock import ProcessClock  # noqa: E402
from controller.run.supervisor import Supervisor  # noqa: E402
from controller.safety.states import State  # noqa: E402
from simulators.control import control_request  # noqa: E402

RECIPES = ("f-doped-cladding", "silica-overclad", "smoke-test")
# (device, fault, wall seconds): each one the controller recovers from by itself or by the
# operator's clear and reset; none needs a purge by command (no gas-detector trips).
FAULTS = (("rf", "flame_out", 0.3), ("diameter_gauge", "silent", 2.0), ("mfc_sicl4", "silent", 1.0),
          ("safety_io", "water_flow_low", 1.0))
OPERATOR = "soak"
LAG_PROBE_S = 0.05
STUCK_S = 900.0  # wall seconds in one state with nothing moving: report and end the soak


@dataclass
class Sample:
    wall_s: float
    process_h: float
    rss_mb: float
    fds: int
    tasks: int
    lag_ms: float  # the worst overshoot of the probe's sleep since the last sample
    state: str
    runs: int


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Soak:
    def __init__(self, sup: Supervisor, line: LineConfig, control: tuple[str, int],
                 rng: random.Random, scale: float) -> None:
        self.sup = sup
        self.line = line
        self.control = control
        self.rng = rng
        self.scale = scale
        self.started = time.monotonic()
        self.samples: list[Sample] = []
        self.idle: list[Sample] = []  # taken at Idle between runs
        self.outcomes: Counter[str] = Counter()
        self.actions: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.problems: list[str] = []
        self._lag = 0.0

    def sample(self) -> Sample:
        wall = time.monotonic() - self.started
        return Sample(round(wall, 1), round(wall * self.scale / 3600, 3), round(rss_mb(), 2),
                      open_fds(), len(asyncio.all_tasks()), round(self._lag * 1000, 1),
                      self.sup.sm.state.value, sum(self.outcomes.values()))

    async def probe_lag(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_PROBE_S)
            self._lag = max(self._lag, time.monotonic() - before - LAG_PROBE_S)

    async def sampler(self, every_s: float) -> None:
        while True:
            self.samples.append(self.sample())
            self._lag = 0.0
            await asyncio.sleep(every_s)

    async def _command(self, command: str, reason: str) -> bool:
        result = await self.sup.command(command, OPERATOR, reason=reason)
        self.actions[command] += 1
        if not result.accepted:
            self.refusals[f"{command}: {result.reason}"] += 1
        return result.accepted

    async def _control(self, request: dict[str, Any]) -> None:
        reply = await control_request(*self.control, request)
        if not reply.get("ok"):
            self.problems.append(f"simulator refused {request}: {reply}")

    async def one_run(self) -> None:
        sup = self.sup
        await self._control({"cmd": "set", "key": "rod_diameter_mm", "value": 30.0})
        await sup.reset_controller_loss(OPERATOR)
        await sup.wait_healthy(30)
        name = self.rng.choice(RECIPES)
        recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml", self.line)
        header = RunHeader(recipe_name=recipe.name, recipe_text=recipe.text, line=self.line.line,
                           machine=self.line.machine, operator=OPERATOR,
                           preform_serial=f"S-{sum(self.outcomes.values()) + 1}")
        result = await sup.command("start", OPERATOR, plan=plan_from_recipe(recipe, self.line),
                                   header=header)
        if not result.accepted:
            self.refusals[f"start: {result.reason}"] += 1
            await asyncio.sleep(2)
            return
        while not sup.finished.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sup.finished.wait(), self.rng.uniform(2, 15))
                break
            await self._disturb()
        self.outcomes[sup.sm.state.value] += 1
        await self._back_to_idle()

    async def _disturb(self) -> None:
        """One random fault or operator action during a run."""
        sup, rng = self.sup, self.rng
        choice = rng.random()
        if choice < 0.35:
            device, kind, seconds = rng.choice(FAULTS)
            self.actions[f"fault {device} {kind}"] += 1
            await self._control({"cmd": "fault", "device": device, "kind": kind,
                                 "duration_s": seconds, "params": {}})
        elif choice < 0.6 and sup.sm.state is State.EXECUTE:
            if await self._command("hold", "soak: operator hold"):
                await self._wait_state({State.HELD, State.ABORTED, State.STOPPED}, 120)
                await asyncio.sleep(rng.uniform(0.5, 3))
                if sup.sm.state is State.HELD:
                    await self._command("unhold", "soak: operator unhold")
        elif choice < 0.8 and sup.sm.state is State.EXECUTE:
            power = round(rng.uniform(-2, 2), 1)
            reason = sup.trim_refusal(power, None)
            self.actions["trim"] += 1
            if reason is None:
                await sup.set_trim(power, None, OPERATOR)
            else:
                self.refusals[f"trim: {reason}"] += 1

    async def _wait_state(self, states: set[State], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.sup.sm.state not in states:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _back_to_idle(self) -> None:
        """As an operator would: an aborted run cleared once its cause has gone, then reset."""
        sup = self.sup
        deadline = time.monotonic() + STUCK_S
        while sup.sm.state is not State.IDLE:
            if time.monotonic() > deadline:
                self.problems.append(f"stuck in {sup.sm.state.value} for {STUCK_S:g} s")
                raise RuntimeError(self.problems[-1])
            state = sup.sm.state
            if state is State.ABORTED:
                await sup.reset_controller_loss(OPERATOR)
                if not await self._command("clear", "soak: cause gone"):
                    await asyncio.sleep(2)
            elif state in (State.STOPPED, State.COMPLETE):
                await self._command("reset", "soak: next run")
            await asyncio.sleep(0.2)
        self.idle.append(self.sample())


def start_simulator(work: Path, time_scale: float) -> tuple[subprocess.Popen[bytes], Path]:
    """The separate povd-sim; its endpoints document once it serves."""
    endpoints = work / "endpoints.json"
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulators.serve", "serve", "--time-scale", str(time_scale),
         "--no-pty", "--endpoints-json", str(endpoints)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 60
    while not endpoints.exists():
        if time.monotonic() > deadline or sim.poll() is not None:
            sim.terminate()
            raise RuntimeError("povd-sim did not start")
        time.sleep(0.1)
    return sim, endpoints


async def soak(args: argparse.Namespace, work: Path,
               endpoints: dict[str, Any]) -> tuple[dict[str, Any], list[Sample]]:
    line = load_line_config()
    db = work / "records.sqlite3"
    control = (endpoints["control"]["host"], int(endpoints["control"]["port"]))
    async with RunRecords(db, line=line.line) as records:
        sup = Supervisor(build_machine(line, endpoints), records,
                         clock=ProcessClock(args.time_scale))
        async with sup:
            missing = await sup.wait_links(30)
            if missing:
                raise RuntimeError(f"no link to {missing}")
            await sup.make_idle("soak")
            state = Soak(sup, line, control, random.Random(args.seed), args.time_scale)
            helpers = [asyncio.create_task(state.probe_lag(), name="soak-lag"),
                       asyncio.create_task(state.sampler(args.sample_s), name="soak-sampler")]
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(args.duration):
                        while True:
                            await state.one_run()
            except RuntimeError:
                pass  # a stuck state, in problems
            finally:
                for task in helpers:
                    task.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
            await _end_run(state)
            state.samples.append(state.sample())
    verification = verify_records(db, legal_transitions())
    return report(args, state, verification.to_json()), state.samples


async def _end_run(state: Soak) -> None:
    """The soak's time is up: a run in progress is stopped (the records say so)."""
    sup = state.sup
    if sup.sm.run_active:
        if sup.sm.state in (State.EXECUTE, State.HELD, State.SUSPENDED):
            await sup.command("stop", OPERATOR, reason="soak over")
        await state._wait_state({State.STOPPED, State.ABORTED, State.COMPLETE}, 600)


def slope_per_h(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (wall seconds, value), per wall hour."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 3600


def report(args: argparse.Namespace, state: Soak, verification: dict[str, Any]) -> dict[str, Any]:
    samples = state.samples
    warm = [s for s in samples if s.wall_s >= args.warm_up]
    rss_h = slope_per_h([(s.wall_s, s.rss_mb) for s in warm])
    idle = [s for s in state.idle if s.wall_s >= args.warm_up] or state.idle
    wall_h = samples[-1].wall_s / 3600 if samples else 0.0

    def spread(values: list[float]) -> dict[str, float] | None:
        return None if not values else {"first": values[0], "last": values[-1],
                                        "min": min(values), "max": max(values)}

    lags = sorted(s.lag_ms for s in samples)
    return {
        "command": f"bench/soak.py {args.duration:g} --seed {args.seed} "
                   f"--time-scale {args.time_scale:g}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}",
        "wall_h": round(wall_h, 3),
        "process_h": round(wall_h * args.time_scale, 1),
        "process_days": round(wall_h * args.time_scale / 24, 2),
        "runs": dict(state.outcomes),
        "actions": dict(state.actions),
        "refusals": dict(state.refusals.most_common(10)),
        "problems": state.problems,
        "samples": len(samples),
        "warm_up_s": args.warm_up,
        "rss_mb": spread([s.rss_mb for s in warm]),
        "rss_growth_mb_per_wall_h": None if rss_h is None else round(rss_h, 2),
        "rss_growth_mb_per_10_process_h": None if rss_h is None
        else round(rss_h * 10 / args.time_scale, 3),
        "fds_at_idle": spread([float(s.fds) for s in idle]),
        "tasks_at_idle": spread([float(s.tasks) for s in idle]),
        "fds": spread([float(s.fds) for s in warm]),
        "tasks": spread([float(s.tasks) for s in warm]),
        "loop_lag_ms": None if not lags else {
            "median": lags[len(lags) // 2], "p99": lags[min(len(lags) - 1, len(lags) * 99 // 100)],
            "max": lags[-1]},
        "verify": {"ok": verification["ok"], "events": verification["events"],
                   "runs": len(verification["runs"]),
                   "findings": [f for r in verification["runs"] for f in r["findings"]]
                   + verification["findings"]},
    }


def write_csv(path: Path, samples: list[Sample]) -> None:
    names = list(asdict(samples[0])) if samples else []
    rows = [",".join(names)] + [",".join(str(v) for v in asdict(s).values()) for s in samples]
    path.write_text("\n".join(rows) + "\n")


def write_svg(path: Path, samples: list[Sample], title: str) -> None:
    """Four stacked panels against wall minutes: RSS, fds, tasks, loop lag. Drawn by hand (no
    plotting library is a dependency)."""
    panels = (("RSS (MB)", "rss_mb"), ("open fds", "fds"), ("asyncio tasks", "tasks"),
              ("loop lag, worst per sample (ms)", "lag_ms"))
    width, height, left, top, gap = 760, 130, 70, 40, 40
    total_h = top + len(panels) * (height + gap)
    end = max((s.wall_s for s in samples), default=1.0) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + left + 20}" '
             f'height="{total_h}" font-family="sans-serif" font-size="12">',
             f'<text x="{left}" y="20" font-size="14">{title}</text>']
    for index, (label, key) in enumerate(panels):
        y0 = top + index * (height + gap)
        values = [float(getattr(s, key)) for s in samples]
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        if high - low < 1e-9:
            low, high = low - 1, high + 1
        scale_y = height / (high - low)
        points = " ".join(
            f"{left + s.wall_s / end * width:.1f},{y0 + height - (v - low) * scale_y:.1f}"
            for s, v in zip(samples, values, strict=True))
        parts += [f'<rect x="{left}" y="{y0}" width="{width}" height="{height}" fill="none" '
                  'stroke="#999"/>',
                  f'<text x="{left}" y="{y0 - 6}">{label}</text>',
                  f'<text x="{left - 6}" y="{y0 + 10}" text-anchor="end">{high:.4g}</text>',
                  f'<text x="{left - 6}" y="{y0 + height}" text-anchor="end">{low:.4g}</text>',
                  f'<polyline fill="none" stroke="#1f77b4" stroke-width="1" points="{points}"/>']
    parts.append(f'<text x="{left + width}" y="{total_h - 8}" text-anchor="end">wall minutes: '
                 f'0 to {end / 60:.0f}</text></svg>')
    path.write_text("\n".join(parts) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("duration", type=float, help="wall seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-scale", type=float, default=200.0)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--warm-up", type=float, default=120.0,
                        help="wall seconds left out of the growth figures (imports, caches)")
    parser.add_argument("--svg", type=Path, default=None)
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the records and the simulator here (default: a temporary dir)")
    args = parser.parse_args()
    configure_logging(json=True, level="ERROR")
    with tempfile.TemporaryDirectory(prefix="povd-soak-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sim, endpoints = start_simulator(work, args.time_scale)
        try:
            result, samples = asyncio.run(soak(args, work, load_endpoints(endpoints)))
        finally:
            sim.terminate()
            sim.wait(timeout=30)
    if args.csv is not None:
        write_csv(args.csv, samples)
    if args.svg is not None:
        write_svg(args.svg, samples, f"povd soak: {result['process_days']} process days at "
                  f"x{args.time_scale:g}, {result['wall_h']} wall hours")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
