"""What the service benches share (loop_health.py, footprint.py): ``povd serve --sim`` at x1
as the line PC runs it, a user, a run started over the API and waited into deposition, and
the controller process's own figures.

Two ways to start the controller:
- ``plain``: ``python -m controller.cli.main serve ...``, exactly as installed; its CPU and RSS
  are read from ``/proc/<pid>`` (footprint.py). Its povd-sim child is another process and is
  not counted.
- ``probed``: the same ``povd serve`` code run by this module as the child's main
  (``python bench/serve_rig.py --stats FILE serve ...``) with one change: the supervisor is a
  subclass that, for the life of the service, runs a loop-lag probe and samples every device's
  poll counter, inside the controller process, and writes them to FILE when the service
  stops. The probe sleeps one safety period and records how late it woke (the measure the
  supervisor's own ``cycle_watchdog`` keeps as ``worst_gap_s``), so lag is measured on the
  controller's own event loop, not guessed from outside.

Not a bench itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "tests" / "system" / "recipes" / "long.yaml"  # 40 passes of 12 s: 8 min at x1
USER, PASSWORD = "olga", "olga-bench-password"
STARTUP_S = 90.0
# At x1 the start homes the axes (about 2.5 min: the start's answer waits for it), then the
# purge, ignition and ramp take about a minute.
DEPOSIT_WAIT_S = 420.0
EXIT_S = 60.0
# The bench ends mid-run: SIGTERM would hold and stop the run in a controlled way, which takes
# minutes at x1 (cool-down, and the hot rod kept turning), so the controller gets this long,
# then SIGKILL (its povd-sim child dies with it).
STOP_GRACE_S = 5.0
SAMPLE_PERIOD_S = 1.0  # poll counters sampled this often inside the controller
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


# -- the controller process's figures from outside (/proc) ---------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process itself (its children not counted)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def rss_mb(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * PAGE / 2**20


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- the service -----------------------------------------------------------------------------
@dataclass
class Served:
    proc: subprocess.Popen[str]
    url: str
    data_dir: Path
    stats_path: Path | None

    def login(self) -> Any:
        from controller.cli.service_client import ServiceClient  # noqa: PLC0415

        client = ServiceClient(self.url, timeout_s=DEPOSIT_WAIT_S)
        client.login(USER, PASSWORD)
        return client

    def stats(self) -> dict[str, Any]:
        """The probed controller's samples so far (it writes them on SIGUSR1)."""
        assert self.stats_path is not None
        self.proc.send_signal(signal.SIGUSR1)
        wait_for(self.stats_path.exists, EXIT_S, "the controller's samples")
        time.sleep(0.5)  # written in one go; give a large one time to land
        wait_for(lambda: _complete_json(self.stats_path), EXIT_S, "the samples written")
        result: dict[str, Any] = json.loads(self.stats_path.read_text())
        return result


def _complete_json(path: Path | None) -> bool:
    assert path is not None
    try:
        json.loads(path.read_text())
    except ValueError:
        return False
    return True


def _env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "POVD_DATA_DIR": str(data_dir)}


def add_user(data_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "users", "add", USER, "--role",
         "operator", "--password-stdin"], input=PASSWORD + "\n", capture_output=True,
        text=True, env=_env(data_dir), timeout=120, check=False, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"povd users add: {done.stderr}")


UVLOOP_MAIN = "import uvloop; uvloop.install(); from controller.cli.main import main; main()"
# As deploy/systemd/povd.service runs it: JSON logs at INFO on stderr (here a file).
GLOBAL_ARGS = ("--log-json", "--log-level", "INFO")


@contextmanager
def serving(*extra: str, probed: bool, profile: Path | None = None,
            loop: str = "asyncio") -> Iterator[Served]:
    """``povd serve --sim --time-scale 1`` in a fresh data directory, with a user;
    ``profile``: the probed controller, which profiles itself (pyinstrument) from SIGUSR2 to
    SIGUSR1 and writes the profile there (HTML, and text beside it)."""
    with tempfile.TemporaryDirectory(prefix="povd-bench-") as tmp:
        work = Path(tmp)
        data_dir, url_file = work / "data", work / "url"
        add_user(data_dir)
        stats_path = work / "stats.json" if probed else None
        if probed or profile is not None:
            stats_path = work / "stats.json"
            head = [sys.executable, str(Path(__file__).resolve()), "--stats", str(stats_path)]
            if profile is not None:
                head += ["--profile", str(profile.resolve())]
        elif loop == "uvloop":  # the same command on uvloop's event loop
            head = [sys.executable, "-c", UVLOOP_MAIN]
        else:
            head = [sys.executable, "-m", "controller.cli.main"]
        command = [*head, *GLOBAL_ARGS, "serve", "--sim", "--time-scale", "1",
                   "--http", "127.0.0.1:0", "--url-file", str(url_file), *extra]
        with (work / "serve.err").open("w") as err:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err,
                                    stdin=subprocess.DEVNULL, text=True, env=_env(data_dir),
                                    cwd=REPO)
            try:
                wait_for(lambda: (url_file.exists() and url_file.read_text().startswith("http"))
                         or proc.poll() is not None, STARTUP_S, "the served URL")
                if proc.poll() is not None:
                    raise RuntimeError((work / "serve.err").read_text()[-3000:])
                yield Served(proc, url_file.read_text().strip(), data_dir, stats_path)
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=STOP_GRACE_S)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=10)


def start_run_and_wait_deposition(served: Served) -> dict[str, Any]:
    """Start the 40-pass recipe and wait until the torch deposits; returns the start's reply
    data and how long deposition took to come."""
    client = served.login()
    started = time.monotonic()
    try:
        reply = client.command("start", {"recipe_text": RECIPE.read_text(),
                                         "preform_serial": "BENCH-1"})
        if not reply.accepted:
            raise RuntimeError(f"start refused: {reply.reason}")

        def depositing() -> bool:
            status = client.status()
            if status["state"] in ("Aborted", "Stopped", "Complete"):
                raise RuntimeError(f"the run ended before deposition: {status}")
            return bool(status["state"] == "Execute" and status["op"] == "deposit")

        wait_for(depositing, DEPOSIT_WAIT_S, "deposition")
        return {"run_id": reply.data["run_id"],
                "start_to_deposit_s": round(time.monotonic() - started, 1)}
    finally:
        client.close()


def run_state(served: Served) -> dict[str, Any]:
    client = served.login()
    try:
        status: dict[str, Any] = client.status()
        return status
    finally:
        client.close()


# -- the probed controller (this module as the child's main) ---------------------------------
SLOW_CALLBACK_S = 0.001  # a loop callback (or a GC pass) this long is kept, with its name


class SlowCallbacks:
    """What the loop's tail is made of: every callback the loop runs that takes longer than
    ``SLOW_CALLBACK_S``, and every garbage collection as long, with when and whose (a task's
    coroutines, outermost first, where it stopped). Wraps ``asyncio.Handle._run``, which every
    callback and timer goes through: a clock read either side of each, about a microsecond."""

    def __init__(self) -> None:
        self.slow: list[tuple[float, float, str]] = []  # (monotonic end, seconds, whose)
        self._gc_started = 0.0
        run = asyncio.events.Handle._run
        census = self

        def timed_run(handle: asyncio.events.Handle) -> None:
            started = time.perf_counter()
            run(handle)
            took = time.perf_counter() - started
            if took > SLOW_CALLBACK_S:
                census.slow.append((time.monotonic(), took, _whose(handle)))

        asyncio.events.Handle._run = timed_run  # type: ignore[method-assign,assignment]
        import gc  # noqa: PLC0415

        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_started
        if took > SLOW_CALLBACK_S:
            self.slow.append((time.monotonic(), took, f"gc generation {info['generation']}"))


def _whose(handle: asyncio.events.Handle) -> str:
    callback = getattr(handle, "_callback", None)  # asyncio's own; the bench's census only
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        names: list[str] = []
        coro: Any = task.get_coro()
        while coro is not None and len(names) < 12:
            names.append(getattr(coro, "__qualname__", type(coro).__name__))
            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        return f"task {task.get_name()}: " + " > ".join(names)
    return str(getattr(callback, "__qualname__", type(callback).__name__))


def _probed_supervisor(stats_path: Path, profile_path: Path | None) -> type:
    from controller.machine.polling import poll_hz  # noqa: PLC0415
    from controller.run.supervisor import Supervisor  # noqa: PLC0415

    class ProbedSupervisor(Supervisor):
        """The service's supervisor, unchanged, plus a lag probe and a poll-counter sampler."""

        async def __aenter__(self) -> ProbedSupervisor:
            await super().__aenter__()
            self._lags: list[tuple[float, float]] = []
            self._polls: list[tuple[float, dict[str, int]]] = []
            self._probes = [asyncio.create_task(self._probe(), name="bench-lag-probe"),
                            asyncio.create_task(self._sample(), name="bench-poll-sampler")]
            self._profiler: Any = None
            self._census = SlowCallbacks()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGUSR1, self._dump)
            if profile_path is not None:
                loop.add_signal_handler(signal.SIGUSR2, self._start_profile)
            return self

        def _start_profile(self) -> None:
            from pyinstrument import Profiler  # noqa: PLC0415

            self._profiler = Profiler(interval=0.001, async_mode="disabled")
            self._profiler.start()

        async def _probe(self) -> None:
            period = self.cycle_watchdog.period_s
            loop = asyncio.get_running_loop()
            while True:
                due = loop.time() + period
                await asyncio.sleep(period)
                self._lags.append((due, loop.time() - due))

        async def _sample(self) -> None:
            while True:
                self._polls.append((time.monotonic(), {
                    d: h.polls for d, h in self.telemetry.health.items()}))
                await asyncio.sleep(SAMPLE_PERIOD_S)

        def _dump(self) -> None:
            """On SIGUSR1, once the bench has its windows: the lag no longer matters then."""
            if self._profiler is not None:
                self._profiler.stop()
                assert profile_path is not None
                profile_path.write_text(self._profiler.output_html())
                (profile_path.with_suffix(".txt")).write_text(
                    self._profiler.output_text(unicode=False, color=False))
            stats_path.write_text(json.dumps({
                "lags": self._lags, "polls": self._polls,
                "poll_hz": {d: poll_hz(self.line, d) for d in self.line.devices},
                "watchdog": {"worst_gap_ms": round(self.cycle_watchdog.worst_gap_s * 1e3, 2),
                             "late_cycles": self.cycle_watchdog.late_cycles},
                "fanout_dropped": self.fanout.dropped,
                "slow_callbacks": self._census.slow,
            }))

    return ProbedSupervisor


def _child_main(argv: list[str]) -> None:
    """``--stats FILE [--profile FILE] <povd's arguments>``"""
    options = {"--stats": "", "--profile": ""}
    while argv and argv[0] in options:
        options[argv[0]] = argv[1]
        argv = argv[2:]
    from controller.cli import main, serve_command  # noqa: PLC0415

    profile = Path(options["--profile"]) if options["--profile"] else None
    serve_command.Supervisor = _probed_supervisor(  # type: ignore[misc]
        Path(options["--stats"]), profile)
    main.main(argv)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
