"""``povd run``: one recipe run on the line, from validation to the last record.

The recipe is validated before anything else (a bad recipe never touches a device); the line
lock is taken (one controller per line); an interrupted run blocks a new one until it is
resumed or abandoned; then the machine is reached (``--sim`` starts povd-sim as a child that
dies with us; ``--endpoints`` connects to a machine already running) and the run starts.

Ctrl-C at a terminal holds the run and asks what next; without a terminal, and on SIGTERM, it
holds and then stops in a controlled way."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import structlog

from controller.cli.line_lock import line_lock_or_refusal
from controller.cli.output import (
    EXIT_ENDED_OTHERWISE,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_REFUSED,
    err,
    load_config_or_exit,
    out,
)
from controller.cli.sim_child import SimulatorChild
from controller.config.line import LineConfig
from controller.machine.devices import build_machine, load_endpoints
from controller.machine.polling import LineClaimRefused
from controller.recipes.forecast import forecast
from controller.recipes.loading import load_recipe
from controller.recipes.planning import plan_from_recipe
from controller.recipes.recipe import Recipe, RecipeError, format_recipe_error
from controller.records.resume_check import resume_refusal
from controller.records.run_records import (
    RecordsReader,
    RunHeader,
    RunRecords,
    records_path,
    resolve_data_dir,
)
from controller.run.executor import Cursor
from controller.run.process_clock import ProcessClock
from controller.run.restart_reconcile import reconcile
from controller.run.supervisor import Supervisor
from controller.safety.states import State
from drivers.errors import DeviceError

log = structlog.get_logger(__name__)

# Where the machine comes from: yields its endpoints document (None: a real line's own buses).
MachineSource = Callable[
    [argparse.Namespace, LineConfig], contextlib.AbstractAsyncContextManager[dict[str, Any] | None]
]
DRY_RUN_MODULE = "dryrun"


def exec_virtual_run(argv: list[str]) -> NoReturn:
    """``--virtual-time``: the dry run is a program of its own (the ``dryrun`` package), since
    it runs this controller and the simulated line in one process on a virtual clock, and the
    controller never imports the simulators. Hash seed fixed: one source of run-to-run
    difference fewer."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    os.execve(sys.executable, [sys.executable, "-m", DRY_RUN_MODULE, *argv], env)  # noqa: S606 - our own program


@contextlib.asynccontextmanager
async def machine_endpoints(args: argparse.Namespace, line: LineConfig) -> AsyncIterator[
    dict[str, Any] | None
]:
    if args.sim:
        async with SimulatorChild(args.config, args.time_scale or 1.0) as child:
            yield child.endpoints()
    elif args.endpoints is not None:
        yield load_endpoints(args.endpoints)
    else:
        yield None  # a real line: each bus's endpoint is in the line configuration


def _interrupted(data_dir: Path, line: LineConfig) -> list[Any]:
    path = records_path(data_dir)
    if not path.exists():
        return []
    return [r for r in RecordsReader(path).interrupted_runs() if r.line == line.line]


def _resume_cursor(data_dir: Path, run_id: int) -> Cursor:
    checkpoint = RecordsReader(records_path(data_dir)).last_checkpoint(run_id)
    if checkpoint is None:
        return Cursor()
    return Cursor.from_json(checkpoint.state)


async def run_recipe(args: argparse.Namespace,
                     machine_source: MachineSource = machine_endpoints, *,
                     adapt_line: Callable[[LineConfig], LineConfig] | None = None) -> int:
    """``adapt_line``: the loaded line as this run is to poll it (the dry run's rates)."""
    line = load_config_or_exit(args.config)
    if adapt_line is not None:
        line = adapt_line(line)
    try:
        recipe = load_recipe(args.recipe, line)
    except RecipeError as exc:
        err(format_recipe_error(exc))
        return EXIT_INVALID
    data_dir = resolve_data_dir(args.data_dir)
    lock = line_lock_or_refusal(data_dir, line.line)
    if lock is None:
        return EXIT_REFUSED
    try:
        with _signals_queued() as interrupts:
            return await _run_locked(args, line, recipe, data_dir, interrupts,
                                     machine_source=machine_source)
    except LineClaimRefused as exc:  # another controller drives the line: nothing was written
        err(f"refused: {exc}")
        return EXIT_REFUSED
    finally:
        lock.release()


async def _run_locked(
    args: argparse.Namespace, line: LineConfig, recipe: Recipe, data_dir: Path,
    interrupts: asyncio.Queue[str], *, machine_source: MachineSource,
) -> int:
    interrupted = _interrupted(data_dir, line)
    interrupted_ids = [r.id for r in interrupted]
    cursor: Cursor | None = None
    run_id: int | None = None
    chosen = args.resume if args.resume is not None else args.abandon
    if chosen is not None and chosen not in interrupted_ids:
        err(f"refused: run {chosen} is not an interrupted run of line {line.line} "
            f"(interrupted: {interrupted_ids or 'none'})")
        return EXIT_REFUSED
    if chosen is None and interrupted:
        r = interrupted[0]
        err(f"refused: run {r.id} ({r.recipe_name}, serial {r.preform_serial or '-'}) was "
            f"interrupted. Continue it with `povd run {args.recipe} --resume {r.id}` or record it "
            f"as aborted with `povd run {args.recipe} --abandon {r.id}`.")
        return EXIT_REFUSED
    if args.resume is not None:
        r = next(r for r in interrupted if r.id == args.resume)
        ran = RecordsReader(records_path(data_dir)).get_run(r.id)
        why = resume_refusal(r, ran.recipe_text if ran else None, recipe.name, recipe.text)
        if why is not None:
            err(f"refused: {why}")
            return EXIT_REFUSED
        cursor = _resume_cursor(data_dir, args.resume)
        run_id = args.resume
    operator = args.operator or getpass.getuser()
    async with RunRecords(records_path(data_dir), line=line.line) as records:
        if args.abandon is not None:
            await records.record_command(args.abandon, operator, "abandon", {},
                                         accepted=True, reason=None)
            await records.end_run(args.abandon, "abandoned")
            out(f"run {args.abandon} recorded as abandoned")
        async with machine_source(args, line) as endpoints:
            machine = build_machine(line, endpoints)
            scale = machine.time_scale if args.time_scale is None else args.time_scale
            if endpoints is not None and "time_scale" in endpoints:
                scale = float(endpoints["time_scale"])
            supervisor = Supervisor(machine, records, clock=ProcessClock(scale),
                                    link_wait_s=args.link_wait)
            async with supervisor:
                return await _supervise(args, line, recipe, supervisor, operator, cursor, run_id,
                                        restarted=bool(interrupted), interrupts=interrupts)


async def _ready(args: argparse.Namespace, sup: Supervisor, operator: str, *,
                 restarted: bool) -> bool:
    """Every link up, the idle posture, the hardware's latches from a dead controller reset,
    the interlocks healthy, and after a crash the safe state and the reconciliation; False
    (and why, on stderr) when the run must be refused."""
    missing = await sup.wait_links()
    if missing:
        err(f"refused: no answer from {', '.join(missing)}: check that the machine (or "
            f"povd-sim) is running and that the endpoints / line configuration point at it")
        return False
    try:
        await sup.make_idle("connect")
    except DeviceError as exc:
        err(f"refused: the machine did not take the idle posture: {exc}")
        return False
    reset = await sup.reset_controller_loss(operator)
    if reset:
        out(f"reset what the hardware latched when the last controller stopped: "
            f"{', '.join(reset)} (recorded)")
    blockers = await sup.wait_healthy()
    if blockers:
        err("refused: interlocks not healthy: " + "; ".join(blockers))
        return False
    if restarted:
        # After a crash: safe state first, then compare what was commanded with what is.
        await sup.make_safe("restart")
        await asyncio.sleep(0.3)  # fresh readings after the safe-state writes
        await _reconcile(sup, args.resume if args.resume is not None else args.abandon)
    return True


async def _supervise(  # noqa: PLR0917 - one call site, each argument named there
    args: argparse.Namespace,
    line: LineConfig,
    recipe: Recipe,
    sup: Supervisor,
    operator: str,
    cursor: Cursor | None,
    run_id: int | None,
    *,
    restarted: bool,
    interrupts: asyncio.Queue[str],
) -> int:
    if not await _ready(args, sup, operator, restarted=restarted):
        return EXIT_REFUSED
    header = RunHeader(
        recipe_name=recipe.name, recipe_text=recipe.text, line=line.line,
        machine=line.machine, operator=operator, preform_serial=args.serial,
        bait_rod_lot=args.bait_rod_lot, precursor_lot=args.precursor_lot,
    )
    plan = plan_from_recipe(recipe, line)
    if not interrupts.empty():
        err(f"{interrupts.get_nowait()} before the run started: nothing was started")
        return EXIT_ENDED_OTHERWISE
    result = await sup.command("start", operator, plan=plan, header=header, cursor=cursor,
                               run_id=run_id)
    if not result.accepted:
        err(f"refused: {result.reason}")
        return EXIT_REFUSED
    prediction = forecast(plan, line)
    out(f"run {sup.run_id} started: {recipe.name} v{recipe.version}, {plan.total_passes} passes, "
        f"forecast {prediction.duration_h:.2f} h process time at x{sup.clock.time_scale:g}")
    await _watch(sup, operator, prediction.duration_s, interrupts)
    state = sup.sm.state
    out(f"run {sup.run_id} ended: {state.value}"
        + (f" (cause: {sup.trip_cause})" if sup.trip_cause else ""))
    await _until_at_rest(sup, operator, interrupts)
    # The drives' watchdogs take over when this process goes: a cold rod stays still.
    await sup.refresh_watchdog_fallbacks()
    return EXIT_OK if state is State.COMPLETE else EXIT_ENDED_OTHERWISE


async def _until_at_rest(sup: Supervisor, operator: str, interrupts: asyncio.Queue[str]) -> None:
    """Rule 11: the controller does not let go while anything is away from rest. It shows
    which step of the sequence it is on; a second Ctrl-C, confirmed, leaves (recorded)."""
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    shown: str | None = None
    while not sup.rest.at_rest():
        with contextlib.suppress(TimeoutError):
            which = await asyncio.wait_for(interrupts.get(), timeout=0.5)
            if await _leave_unsupervised(sup, operator, which, interactive):
                return
            continue
        text = sup.rest.describe() or "making safe: " + ", ".join(sup.rest.away_from_rest())
        if interactive:
            sys.stdout.write("\r" + text[: os.get_terminal_size().columns - 1].ljust(80))
            sys.stdout.flush()
        elif text != shown:
            out(text)
        shown = text
    out(("\n" if interactive and shown is not None else "") + "machine at rest")


async def _leave_unsupervised(sup: Supervisor, operator: str, which: str,
                              interactive: bool) -> bool:
    away = sup.rest.away_from_rest()
    if interactive:
        answer = await asyncio.get_running_loop().run_in_executor(
            None, _ask, f"\n{which}: the machine is not at rest ({', '.join(away)}). Leave it "
            "to the hardware's own watchdogs, unsupervised? [y/N] ")
        if not answer.lower().startswith("y"):
            return False
    await sup.record_command(operator, "leave_unsupervised", {"signal": which, "away": away},
                             accepted=True, reason=None)
    err(f"left unsupervised ({', '.join(away)}): recorded; the safety PLC and the drives' "
        "watchdogs take over")
    return True


async def _reconcile(sup: Supervisor, run_id: int | None) -> None:
    if run_id is None:
        out("machine made safe after a controller restart")
        return
    detail = sup.records.reader().get_run(run_id)
    if detail is None:
        return
    differences = reconcile(detail, sup.telemetry)
    out(f"machine made safe after a controller restart; run {run_id} last commanded vs now:")
    for difference in differences:
        out(f"  {difference.describe()}")
    await sup.records.record_event(run_id, "reconciled",
                                   {"differences": [d.to_json() for d in differences]})


@contextlib.contextmanager
def _signals_queued() -> Iterator[asyncio.Queue[str]]:
    """From the first moment: SIGINT and SIGTERM become items to handle, never a kill."""
    interrupts: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupts.put_nowait, "SIGINT")
    loop.add_signal_handler(signal.SIGTERM, interrupts.put_nowait, "SIGTERM")
    try:
        yield interrupts
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)


async def _watch(sup: Supervisor, operator: str, forecast_s: float,
                 interrupts: asyncio.Queue[str]) -> None:
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    started = time.monotonic()
    try:
        while not sup.finished.is_set():
            with contextlib.suppress(TimeoutError):
                which = await asyncio.wait_for(interrupts.get(), timeout=1.0)
                await _on_interrupt(sup, operator, which, interactive)
                continue
            _progress(sup, started, forecast_s, interactive)
    finally:
        if interactive:
            out("")


async def _on_interrupt(sup: Supervisor, operator: str, which: str, interactive: bool) -> None:
    if sup.sm.state in (State.EXECUTE, State.SUSPENDED):
        result = await sup.command("hold", operator, reason=which)
        answer = "accepted" if result.accepted else f"refused: {result.reason}"
        out(f"\n{which}: hold {answer}")
    if not interactive or which == "SIGTERM":
        await _wait_not_acting(sup)
        result = await sup.command("stop", operator, reason=f"{which} without a terminal")
        if not result.accepted and sup.sm.state not in (State.STOPPED, State.ABORTED):
            await sup.command("abort", operator, reason=which)
        await _wait_not_acting(sup)
        return
    await _wait_not_acting(sup)
    answer = await asyncio.get_running_loop().run_in_executor(
        None, _ask, "held: [u]nhold, [s]top (controlled), [a]bort? "
    )
    command = {"u": "unhold", "s": "stop", "a": "abort"}.get(answer[:1].lower(), "stop")
    result = await sup.command(command, operator, reason="operator at the terminal")
    if not result.accepted:
        out(f"{command} refused: {result.reason}")


def _ask(prompt: str) -> str:
    try:
        return input(prompt)
    except EOFError:
        return ""


async def _wait_not_acting(sup: Supervisor) -> None:
    acting = {State.HOLDING, State.UNHOLDING, State.SUSPENDING, State.UNSUSPENDING,
              State.STARTING, State.STOPPING, State.ABORTING, State.CLEARING}
    while sup.sm.state in acting:
        await asyncio.sleep(0.05)


def _progress(sup: Supervisor, started: float, forecast_s: float, interactive: bool) -> None:
    t = sup.telemetry
    cursor = sup.executor.cursor if sup.executor else None
    total = sup.plan.total_passes if sup.plan else 0
    rf = f"{t.rf.forward_kw:5.1f} kW{' lit' if t.rf.plasma_lit else ''}" if t.rf else "rf ?"
    flows = " ".join(
        f"{name.removeprefix('mfc_')} {reading.mass_slpm:.1f}" for name, reading in t.mfcs.items()
    )
    diameter = (f"{t.gauge.diameter_mm:.2f} mm" if t.gauge and t.gauge.valid and t.gauge.diameter_mm
                else "- mm")
    elapsed_process = (time.monotonic() - started) * sup.clock.time_scale
    eta_wall = max(0.0, forecast_s - elapsed_process) / sup.clock.time_scale
    alarms = ",".join(a.definition.id for a in sup.alarms.active()) or "none"
    position = (f"layer {cursor.layer + 1} pass {cursor.passes_done}/{total}" if cursor
                else "")
    line = (f"{sup.sm.state.value:<12} {sup.executor.current_op if sup.executor else '':<9} "
            f"{position:<20} {rf} | {flows} | {diameter} | ETA {eta_wall:5.0f} s | "
            f"alarms: {alarms}")
    if interactive:
        sys.stdout.write("\r" + line[: os.get_terminal_size().columns - 1].ljust(80))
        sys.stdout.flush()
    else:
        out(line)
