"""``povd``: the controller's command line.

    povd [--data-dir DIR] validate RECIPE [--config LINE] [--json]
    povd recipe schema
    povd [--data-dir DIR] run RECIPE [--config LINE] [--sim | --endpoints FILE] [--time-scale N]
         [--virtual-time [--seed N] [--fault AT:DEVICE:KIND[:FOR]]]
         [--serial S] [--operator NAME] [--resume RUN_ID | --abandon RUN_ID]
    povd [--data-dir DIR] runs list [--json]
    povd [--data-dir DIR] runs show ID [--json]
    povd [--data-dir DIR] runs report ID [--json | --html FILE | --csv DIR]
    povd [--data-dir DIR] runs verify [--run ID] [--json]

Exit codes: 0 complete / ok; 1 a run ended otherwise; 2 invalid input; 3 refused."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import TypeAlias

from controller.cli.output import (
    EXIT_CLOSED_PIPE,
    EXIT_INVALID,
    EXIT_OK,
    err,
    load_config_or_exit,
    out,
    stdout_to_devnull,
)
from controller.config.logging_setup import configure_logging
from controller.recipes.forecast import forecast
from controller.recipes.loading import load_recipe
from controller.recipes.planning import plan_from_recipe
from controller.recipes.recipe import RecipeError, format_recipe_error, recipe_json_schema

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="povd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"povd {version('povd')}")
    parser.add_argument("--data-dir", default=None,
                        help="where run records live (else $POVD_DATA_DIR, else the user data dir)")
    parser.add_argument("--log-json", action="store_true", help="JSON logs on stderr")
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_recipe_commands(sub)
    _add_run_command(sub)

    # Imported here, not at the top: they pull in the HTTP stack, which validate does not need.
    from controller.cli.admin_commands import add_admin_commands  # noqa: PLC0415
    from controller.cli.client_commands import add_client_commands  # noqa: PLC0415
    from controller.cli.serve_command import add_serve_command  # noqa: PLC0415

    add_serve_command(sub)
    add_client_commands(sub)
    add_admin_commands(sub)
    _add_runs_command(sub)
    return parser


def _add_recipe_commands(sub: Subparsers) -> None:
    validate = sub.add_parser("validate", help="validate a recipe and print its forecast")
    validate.add_argument("recipe", type=Path)
    validate.add_argument("--config", type=Path, default=None, help="line configuration")
    validate.add_argument("--json", action="store_true")
    validate.add_argument("--efficiency", type=float, default=0.5)
    recipe = sub.add_parser("recipe", help="recipe tools")
    recipe_sub = recipe.add_subparsers(dest="recipe_command", required=True)
    recipe_sub.add_parser("schema", help="print the JSON Schema of recipe files")


def _add_run_command(sub: Subparsers) -> None:
    run = sub.add_parser("run", help="run a recipe on the line")
    run.add_argument("recipe", type=Path)
    run.add_argument("--config", type=Path, default=None)
    source = run.add_mutually_exclusive_group()
    source.add_argument("--sim", action="store_true",
                        help="start povd-sim as a child process and run against it")
    source.add_argument("--endpoints", type=Path, default=None,
                        help="endpoints document of a machine already running")
    run.add_argument("--time-scale", type=float, default=None,
                     help="process time runs N times faster (with --sim; else the endpoints')")
    run.add_argument("--serial", default=None, help="preform serial number")
    run.add_argument("--operator", default=None, help="operator name (default: the login user)")
    run.add_argument("--bait-rod-lot", default=None)
    run.add_argument("--precursor-lot", default=None)
    interrupted = run.add_mutually_exclusive_group()
    interrupted.add_argument("--resume", type=int, default=None, metavar="RUN_ID",
                             help="continue an interrupted run from its last completed pass")
    interrupted.add_argument("--abandon", type=int, default=None, metavar="RUN_ID",
                             help="record an interrupted run as abandoned, then start anew")
    run.add_argument("--link-wait", type=float, default=15.0,
                     help="seconds to wait for every device to answer")
    run.add_argument("--virtual-time", action="store_true",
                     help="with --sim: a dry run, controller and simulated line in one process on "
                          "a virtual clock (deterministic, as fast as the CPU allows)")
    run.add_argument("--seed", type=int, default=None,
                     help="with --virtual-time: the simulated plant's random seed")
    run.add_argument("--fault", action="append", default=[], metavar="AT:DEVICE:KIND[:FOR]",
                     help="with --virtual-time: inject a fault at process second AT of the "
                          "simulated line (for FOR process seconds); repeatable")


def _add_runs_command(sub: Subparsers) -> None:
    runs = sub.add_parser("runs", help="read the run records")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    runs_list = runs_sub.add_parser("list")
    runs_list.add_argument("--json", action="store_true")
    runs_show = runs_sub.add_parser("show")
    runs_show.add_argument("run_id", type=int)
    runs_show.add_argument("--json", action="store_true")
    runs_report = runs_sub.add_parser("report", help="a run's report: product, passes, events")
    runs_report.add_argument("run_id", type=int)
    runs_report.add_argument("--json", action="store_true")
    runs_report.add_argument("--html", type=Path, default=None, metavar="FILE",
                             help="write the printable report: one HTML file that opens offline")
    runs_report.add_argument("--csv", type=Path, default=None, metavar="DIR",
                             help="write the run's samples and passes as CSV files into DIR")
    runs_verify = runs_sub.add_parser(
        "verify", help="check sequence numbers, pass continuity, state transitions, audit chain")
    runs_verify.add_argument("--run", type=int, default=None, metavar="ID",
                             help="only this run (default: every run)")
    runs_verify.add_argument("--json", action="store_true")


def cmd_validate(args: argparse.Namespace) -> int:
    line = load_config_or_exit(args.config)
    try:
        recipe = load_recipe(args.recipe, line)
    except RecipeError as exc:
        if args.json:
            out(json.dumps(exc.to_json(), indent=2))
        else:
            err(format_recipe_error(exc))
        return EXIT_INVALID
    prediction = forecast(plan_from_recipe(recipe, line), line, efficiency=args.efficiency)
    if args.json:
        out(json.dumps({"file": str(args.recipe), "valid": True,
                        "forecast": prediction.to_json()}, indent=2))
    else:
        out(f"{args.recipe}: valid ({recipe.name} v{recipe.version}, sha256 {recipe.sha256[:12]})")
        out(prediction.to_text())
    return EXIT_OK


def main(argv: list[str] | None = None) -> None:
    """Every command; one whose reader has gone (``povd runs list | head -1``) ends quietly,
    with no traceback."""
    try:
        try:
            _dispatch(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError:
        stdout_to_devnull()
        sys.exit(EXIT_CLOSED_PIPE)


def _dispatch(argv: list[str] | None) -> None:
    args = _parser().parse_args(argv)
    configure_logging(json=True if args.log_json else None, level=args.log_level.upper())
    if getattr(args, "client_command", None):
        from controller.cli.client_commands import run_client_command  # noqa: PLC0415

        sys.exit(run_client_command(args))
    if getattr(args, "admin_command", None):
        from controller.cli.admin_commands import run_admin_command  # noqa: PLC0415
        from controller.records.run_records import resolve_data_dir  # noqa: PLC0415

        sys.exit(run_admin_command(args, resolve_data_dir(args.data_dir)))
    if args.command == "serve":
        from controller.cli.serve_command import serve  # noqa: PLC0415

        sys.exit(asyncio.run(serve(args)))
    if args.command == "validate":
        sys.exit(cmd_validate(args))
    if args.command == "recipe":
        out(json.dumps(recipe_json_schema(), indent=2))
        sys.exit(EXIT_OK)
    if args.command == "runs":
        from controller.cli.records_commands import cmd_runs  # noqa: PLC0415 - keeps validate fast

        sys.exit(cmd_runs(args))
    if args.command == "run":
        from controller.cli.run_command import (  # noqa: PLC0415 - pulls in every driver
            exec_virtual_run,
            run_recipe,
        )

        if (args.seed is not None or args.fault) and not args.virtual_time:
            err("--seed and --fault belong to the dry run: add --virtual-time (with --sim)")
            sys.exit(EXIT_INVALID)
        if args.virtual_time:
            exec_virtual_run(sys.argv[1:] if argv is None else argv)
        sys.exit(asyncio.run(run_recipe(args)))


if __name__ == "__main__":
    main()
