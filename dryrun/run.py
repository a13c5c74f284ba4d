"""The dry run's program once its clock is in place (see __main__): ``povd run``'s recipe run,
word for word, with the simulated line in this process and the loop on the virtual clock."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import time

from controller.cli.main import _parser
from controller.cli.output import EXIT_INVALID, err, load_config_or_exit
from controller.cli.run_command import run_recipe
from controller.config.logging_setup import configure_logging
from dryrun import step_reads
from dryrun.in_process_line import (
    DEFAULT_TIME_SCALE,
    LandedFault,
    ScheduledFault,
    in_process_line,
)
from dryrun.virtual_clock import VirtualClock
from dryrun.virtual_loop import VirtualTimeLoop


def main(clock: VirtualClock, argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    configure_logging(json=True if args.log_json else None, level=args.log_level.upper())
    if args.command != "run" or not args.sim:
        err("the dry run is `povd run RECIPE --sim --virtual-time`: it needs --sim")
        return EXIT_INVALID
    try:
        faults = [ScheduledFault.parse(text) for text in args.fault]
    except ValueError as exc:
        err(str(exc))
        return EXIT_INVALID
    line = load_config_or_exit(args.config)
    if unknown := sorted({f.device for f in faults} - set(line.devices)):
        err(f"--fault: no device {', '.join(unknown)} on line {line.line}")
        return EXIT_INVALID
    landed: list[LandedFault] = []
    # The readings that end a step at a period of process time (dryrun/step_reads.py), for
    # the controller and, through it, the simulated line.
    scale = args.time_scale or DEFAULT_TIME_SCALE
    loop = VirtualTimeLoop(clock)
    wall0, virtual0 = time.perf_counter(), loop.time()
    try:
        with asyncio.Runner(loop_factory=lambda: loop) as runner:
            code = runner.run(run_recipe(
                args, in_process_line(args.seed, faults, landed),
                adapt_line=functools.partial(step_reads.reading_rates, time_scale=scale)))
    finally:
        loop.close()
    sys.stdout.write(json.dumps({
        "dry_run": {
            "wall_s": round(time.perf_counter() - wall0, 3),
            "virtual_s": round(loop.time() - virtual0, 6),
            "jumps": loop.jumps,
            "thread_waits": loop.thread_waits,  # selects spent waiting for the records' thread
            "seed": args.seed,
            "faults": [{"at_process_s": f.fault.at_process_s, "device": f.fault.device,
                        "kind": f.fault.kind, "landed_process_s": round(f.process_s, 6),
                        "landed_epoch": f.epoch} for f in landed],
        }
    }) + "\n")
    return code


