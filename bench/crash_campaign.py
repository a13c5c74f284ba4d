"""kill -9 campaign (issue 11): the controller (`povd serve --endpoints`) is killed at seeded
random moments of runs while one separate `povd-sim` holds the machine; each kill is followed by
the checks a plant would ask for, then a restart that resumes the run or abandons it on purpose.

    .venv/bin/python bench/crash_campaign.py N SEED [--time-scale 200] [--abandon 0.2]

For each kill:
- the moment: a phase drawn from the seed (starting, ignition, deposition, pass boundary, hold,
  cool-down, resume) and a random delay into it; the phase reached is what the controller's
  status said last;
- acknowledged: every event the controller served (GET /api/events, read from its records)
  and every accepted command reply, logged as they arrive; after the kill each must be in the
  records file as served (records lost = those that are not);
- the machine made safe without a controller, read from the simulator's control channel: the
  RF enable dropped and the RF off, the plasma out, the precursor valve closed;
- `verify_records` (what `povd runs verify` runs) over the file the crash left;
- restart: the new controller makes the machine safe before it serves (checked again at the
  simulator: RF off, precursor valve closed), then resumes the interrupted run from its last
  pass or, with probability --abandon, records it as abandoned and starts a new one.
At the end the real `povd runs verify --json` runs over the whole file.

Prints one JSON document (the summary; --kills adds each kill's record); progress on stderr."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from controller.cli.admin_commands import audit_path  # noqa: E402
from controller.cli.records_commands import legal_transitions  # noqa: E402
from controller.config.line import load_line_config  # noqa: E402
from controller.records.run_records import RecordsReader, records_path  # noqa: E402
from controller.records.verify import verify_records  # noqa: E402
from simulators.control import control_request  # noqa: E402

RECIPE = ROOT / "tests" / "system" / "recipes" / "long.yaml"
LINE = load_line_config().line
USER, PASSWORD = "campaign", "campaign-password-1"
PHASES = ("starting", "ignition", "deposition", "pass_boundary", "hold", "cooldown", "resume")
# The executor's operations in the order a run goes through them (status "op").
OP_ORDER = ("idle", "resume", "purge", "ignite", "ramp", "deposit", "cooldown", "done")
PHASE_OP = {"ignition": "ignite", "deposition": "deposit", "pass_boundary": "deposit",
            "hold": "deposit", "cooldown": "cooldown", "resume": "resume"}
ACTIVE = {"Starting", "Execute", "Completing", "Holding", "Held", "Unholding", "Suspending",
          "Suspended", "Unsuspending", "Stopping", "Aborting"}


def log(**fields: Any) -> None:
    sys.stderr.write(json.dumps(fields, default=str) + "\n")
    sys.stderr.flush()


@dataclass
class Kill:
    index: int
    target: str
    decision: str  # how the run being killed was started: new, resume, after_abandon
    run_id: int | None = None
    state: str | None = None  # the controller's last status before the kill
    op: str | None = None
    passes_recorded: int = 0
    acknowledged_events: int = 0
    acknowledged_commands: int = 0
    records_lost: list[str] = field(default_factory=list)
    safe_after_s: float | None = None  # kill -> the machine safe without a controller
    unsafe: list[str] = field(default_factory=list)
    safe_at_restart: bool | None = None
    verify_findings: list[str] = field(default_factory=list)
    restart_failures: list[str] = field(default_factory=list)  # serve died before serving
    resumed_from_pass: int | None = None
    error: str | None = None


class Sim:
    """The separate povd-sim and its control channel."""

    def __init__(self, work: Path, time_scale: float) -> None:
        self.endpoints = work / "endpoints.json"
        self._log = (work / "sim.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "simulators.serve", "serve", "--time-scale", str(time_scale),
             "--no-pty", "--endpoints-json", str(self.endpoints), "--log-json"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        _until(self.endpoints.exists, 60, "povd-sim endpoints")
        control = json.loads(self.endpoints.read_text())["control"]
        self._control = (control["host"], int(control["port"]))

    def plant(self) -> dict[str, Any]:
        reply = asyncio.run(control_request(*self._control, {"cmd": "plant"}))
        plant: dict[str, Any] = reply["plant"]
        return plant

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._log.close()


def _until(condition: Any, timeout_s: float, what: str, period_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(period_s)


def unsafe_conditions(plant: dict[str, Any]) -> list[str]:
    """What keeps the machine from the safe state a dead controller must leave (rule 11)."""
    problems = []
    for key, safe in (("rf_on", False), ("plasma_lit", False), ("precursor_valve_open", False)):
        if plant.get(key) is not safe:
            problems.append(f"{key}={plant.get(key)}")
    return problems


class ControllerExited(RuntimeError):
    """The controller died by itself before serving (a defect the campaign reports)."""


class Controller:
    """One `povd serve` process and a logged-in client; everything it acknowledged."""

    def __init__(self, work: Path, data: Path, endpoints: Path, generation: int,
                 since: int) -> None:
        url_file = work / f"url-{generation}.txt"
        self._log = (work / f"serve-{generation}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli.main", "--data-dir", str(data),
             "serve", "--endpoints", str(endpoints), "--http", "127.0.0.1:0",
             "--url-file", str(url_file)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
        def serving() -> bool:
            if self.proc.poll() is not None:
                self._log.close()
                raise ControllerExited(f"povd serve exited with {self.proc.returncode} at "
                                       f"start-up (serve-{generation}.log)")
            return url_file.exists() and url_file.read_text().strip() != ""

        _until(serving, 90, "povd serve's URL", 0.05)
        self.client = httpx.Client(base_url=url_file.read_text().strip(), timeout=30)
        token = self.client.post("/api/login", json={"username": USER, "password": PASSWORD})
        token.raise_for_status()
        self.client.headers["Authorization"] = f"Bearer {token.json()['token']}"
        self.events: dict[int, tuple[str, Any]] = {}  # seq -> (kind, payload), as served
        self.commands: list[tuple[int | None, str]] = []  # accepted replies: (run, command)
        self._since = since  # events from before this controller were acknowledged before

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.client.get("/api/status").json()
        return status

    def poll_events(self) -> None:
        for event in self.client.get("/api/events", params={"since": self._since}).json():
            self.events[event["seq"]] = (event["kind"], event["payload"])
            self._since = max(self._since, event["seq"])

    def command(self, name: str, **args: Any) -> dict[str, Any]:
        reply: dict[str, Any] = self.client.post(f"/api/commands/{name}",
                                                 json={"args": args}).json()
        if reply.get("accepted"):
            self.commands.append((self.status().get("run_id"), name))
        return reply

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.client.close()
        self._log.close()


def _op_index(op: str | None) -> int:
    return OP_ORDER.index(op) if op in OP_ORDER else 0


class Campaign:
    def __init__(self, kills: int, seed: int, time_scale: float, abandon: float,
                 work: Path) -> None:
        self.kills_wanted = kills
        self.rng = random.Random(seed)
        self.time_scale = time_scale
        self.abandon_p = abandon
        self.work = work
        self.data = work / "data"
        self.db = records_path(self.data)
        self.kills: list[Kill] = []
        self.recipe_text = RECIPE.read_text()
        # A pass of the long recipe in wall seconds: 12 s of process time.
        self.pass_wall_s = 12.0 / time_scale

    def run(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "controller.cli.main", "--data-dir", str(self.data),
             "users", "add", USER, "--role", "operator", "--password-stdin"],
            input=PASSWORD + "\n", text=True, check=True, capture_output=True, cwd=ROOT)
        sim = Sim(self.work, self.time_scale)
        try:
            for index in range(1, self.kills_wanted + 1):
                self.kills.append(self._one_kill(sim, index))
        finally:
            sim.close()

    def _one_kill(self, sim: Sim, index: int) -> Kill:
        target = self.rng.choice(PHASES)
        kill = Kill(index, target, decision="new")
        for attempt in range(1, 4):
            since = RecordsReader(self.db).last_seq(LINE) if self.db.exists() else 0
            try:
                controller = Controller(self.work, self.data, sim.endpoints,
                                        index * 10 + attempt, since)
                break
            except ControllerExited as exc:
                kill.restart_failures.append(str(exc))
        else:
            kill.error = "the controller would not start three times running"
            return kill
        try:
            self._start_or_resume(controller, sim, kill)
            self._wait_for_moment(controller, kill)
        except Exception as exc:  # the kill still happens; the error is in the record
            kill.error = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(httpx.HTTPError):
                controller.poll_events()  # the last acknowledgements before the kill
            controller.kill()
        self._after_kill(sim, controller, kill)
        log(**{k: v for k, v in asdict(kill).items() if v not in (None, [], 0)})
        return kill

    def _start_or_resume(self, controller: Controller, sim: Sim, kill: Kill) -> None:
        status = controller.status()
        interrupted = status.get("interrupted_runs") or []
        if interrupted:
            # The new controller made the machine safe before it started serving.
            kill.safe_at_restart = not unsafe_conditions(sim.plant())
            run_id = interrupted[0]
            if self.rng.random() < self.abandon_p:
                kill.decision = "after_abandon"
                reply = controller.command("start", recipe_text=self.recipe_text,
                                           abandon_run_id=run_id, preform_serial=f"C-{kill.index}")
            else:
                kill.decision = "resume"
                checkpoint = RecordsReader(self.db).last_checkpoint(run_id)
                kill.resumed_from_pass = checkpoint.pass_index if checkpoint else 0
                reply = controller.command("start", recipe_text=self.recipe_text,
                                           resume_run_id=run_id)
        else:
            reply = controller.command("start", recipe_text=self.recipe_text,
                                       preform_serial=f"C-{kill.index}")
        if not reply.get("accepted"):
            raise RuntimeError(f"start refused: {reply.get('reason')}")
        if kill.target == "resume" and kill.decision != "resume":
            kill.target = "starting"  # no resume to cut into: the start instead

    def _wait_for_moment(self, controller: Controller, kill: Kill) -> None:
        """Poll the status (and collect acknowledgements) until the target phase, then a
        random delay into it; a phase the run is already past falls to the next one."""
        rng, target = self.rng, kill.target
        delay = {"starting": rng.uniform(0, 0.3), "ignition": rng.uniform(0, 0.05),
                 "deposition": rng.uniform(0, 3 * self.pass_wall_s),
                 "pass_boundary": rng.uniform(0, 0.01), "hold": rng.uniform(0, 0.4),
                 "cooldown": rng.uniform(0, 2.0), "resume": rng.uniform(0, 0.05)}[target]
        boundary_from: int | None = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = controller.status()
            controller.poll_events()
            kill.state, kill.op, kill.run_id = status["state"], status["op"], status["run_id"]
            passes = (status.get("cursor") or {}).get("passes_done", 0)
            if status["state"] not in ACTIVE:
                break  # the run has ended: the kill lands after it
            want = PHASE_OP.get(target)
            if want is not None and _op_index(status["op"]) > _op_index(want):
                if _op_index(status["op"]) > _op_index("cooldown"):
                    break  # past every phase: the kill lands as the run ends
                target, want = "cooldown", "cooldown"
            if target == "starting" or (want is not None and status["op"] == want):
                if target == "pass_boundary":
                    if boundary_from is None:
                        boundary_from = passes
                    if passes == boundary_from:
                        continue
                if target == "hold" and status["state"] == "Execute":
                    controller.command("hold", reason="crash campaign")
                break
        time.sleep(delay)
        try:
            status = controller.status()
            kill.state, kill.op = status["state"], status["op"]
        except httpx.HTTPError:
            pass

    def _after_kill(self, sim: Sim, controller: Controller, kill: Kill) -> None:
        started = time.monotonic()
        try:
            _until(lambda: not unsafe_conditions(sim.plant()), 15, "the safe state", 0.05)
            kill.safe_after_s = round(time.monotonic() - started, 3)
        except TimeoutError:
            kill.unsafe = unsafe_conditions(sim.plant())
        kill.records_lost = self._lost(controller)
        kill.acknowledged_events = len(controller.events)
        kill.acknowledged_commands = len(controller.commands)
        result = verify_records(self.db, legal_transitions(), audit=audit_path(self.data))
        kill.verify_findings = [f"{f.check} run {f.run_id}: {f.detail}"
                                for f in result.all_findings]
        if kill.run_id is not None:
            detail = RecordsReader(self.db).get_run(kill.run_id)
            kill.passes_recorded = len(detail.passes) if detail else 0

    def _lost(self, controller: Controller) -> list[str]:
        """Acknowledged and not in the records as acknowledged."""
        lost = []
        stored = {e.seq: e for e in RecordsReader(self.db).events_since(
            min(controller.events, default=1) - 1, limit=1_000_000)}
        for seq, (kind, payload) in controller.events.items():
            event = stored.get(seq)
            if event is None or (event.kind, event.payload) != (kind, payload):
                lost.append(f"event {seq} {kind}")
        rows: Counter[tuple[int, str]] = Counter()
        for run_id, name in set(controller.commands):
            detail = RecordsReader(self.db).get_run(run_id) if run_id is not None else None
            if detail is None:
                continue
            rows[(run_id, name)] = sum(1 for c in detail.commands if c.accepted
                                       and c.command == name)
        for (run_id, name), count in Counter(controller.commands).items():
            if run_id is not None and rows[(run_id, name)] < count:
                lost.append(f"command {name} of run {run_id}")
        return lost

    def final_verify(self) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "controller.cli.main", "--data-dir", str(self.data),
             "runs", "verify", "--json"], capture_output=True, text=True, timeout=300,
            cwd=ROOT, check=False)
        report: dict[str, Any] = json.loads(done.stdout) if done.stdout.strip() else {}
        report["exit_code"] = done.returncode
        return report


def summary(campaign: Campaign, wall_s: float, command: str) -> dict[str, Any]:
    kills = campaign.kills
    final = campaign.final_verify()
    runs = final.get("runs", [])
    return {
        "command": command,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}",
        "time_scale": campaign.time_scale,
        "wall_s": round(wall_s, 1),
        "kills": len(kills),
        "by_phase_reached": dict(Counter(
            f"{k.state}/{k.op}" for k in kills).most_common()),
        "by_target": dict(Counter(k.target for k in kills)),
        "starts": dict(Counter(k.decision for k in kills)),
        "acknowledged_events": sum(k.acknowledged_events for k in kills),
        "acknowledged_commands": sum(k.acknowledged_commands for k in kills),
        "records_lost": sum(len(k.records_lost) for k in kills),
        "unsafe_after_kill": sum(1 for k in kills if k.unsafe),
        "safe_after_s_max": max((k.safe_after_s or 0.0 for k in kills), default=None),
        "unsafe_at_restart": sum(1 for k in kills if k.safe_at_restart is False),
        "kills_with_findings": sum(1 for k in kills if k.verify_findings),
        "errors": [f"kill {k.index}: {k.error}" for k in kills if k.error],
        "controller_exited_at_start_up": [f"kill {k.index}: {f}" for k in kills
                                          for f in k.restart_failures],
        "final_verify": {"exit_code": final.get("exit_code"), "ok": final.get("ok"),
                         "events": final.get("events"), "audit_entries": final.get("audit_entries"),
                         "runs": len(runs),
                         "outcomes": dict(Counter(r["outcome"] or "interrupted" for r in runs)),
                         "resumes": sum(r["resumes"] for r in runs),
                         "passes": sum(r["passes"] for r in runs),
                         "findings": [f for r in runs for f in r["findings"]]
                         + final.get("findings", [])},
        "findings_seen": sorted({f for k in kills for f in k.verify_findings})[:50],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kills", type=int)
    parser.add_argument("seed", type=int)
    parser.add_argument("--time-scale", type=float, default=200.0)
    parser.add_argument("--abandon", type=float, default=0.2,
                        help="probability that an interrupted run is abandoned, not resumed")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the records and logs here (default: a temporary directory)")
    parser.add_argument("--kills-detail", action="store_true", help="each kill's record too")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="povd-crash-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        campaign = Campaign(args.kills, args.seed, args.time_scale, args.abandon, work)
        campaign.run()
        result = summary(campaign, time.monotonic() - started,
                         f"bench/crash_campaign.py {args.kills} {args.seed} "
                         f"--time-scale {args.time_scale:g} --abandon {args.abandon:g}")
        if args.kills_detail:
            result["kill_records"] = [asdict(k) for k in campaign.kills]
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
