"""The `povd` commands that are clients of a running service (the admin commands on the line
PC's own files are ``admin_commands``).

Client commands (each takes --url, else $POVD_URL, else http://127.0.0.1:8470):
    povd login [USERNAME]            povd logout            povd status [--json]
    povd start RECIPE [--serial S] [--operator NAME] [--bait-rod-lot L] [--precursor-lot L]
    povd hold | unhold | stop | abort | reset | clear [--reason R]
    povd alarms [--json] | alarms ack ID | alarms shelve ID --for SECONDS --reason R
    povd mode production|maintenance
    povd trim [--power-kw X] [--traverse-pct Y]
    povd add-passes [--layer N] --passes K
    povd jog AXIS +|- [--speed S] [--for SECONDS] [--renew-every SECONDS]
    povd home AXIS          povd move AXIS POSITION_MM [--speed S]
Exit codes: 0 accepted / ok, 1 connection or other error, 2 bad input, 3 refused.

The arguments each command sends to the service (`ControllerService.execute`):
    start   {recipe_text, recipe_path, preform_serial, operator, bait_rod_lot, precursor_lot,
             resume_run_id?, abandon_run_id?}
    ack     {alarm_id}            shelve {alarm_id, for_s}            mode {mode}
    trim    {power_kw?, traverse_pct?}
    add_passes {passes, layer?}   (layer: index in the deposit step; default the current one)
    jog     {axis, direction: "+" | "-", speed?}   (renewed every 100 ms while held)
    jog_stop {axis}               home {axis}      move {axis, position_mm, speed?}
and {reason} when --reason is given."""

from __future__ import annotations

import argparse
import getpass
import json
import time
from pathlib import Path
from typing import Any, TypeAlias

from controller.cli.output import EXIT_ERROR, EXIT_INVALID, EXIT_OK, EXIT_REFUSED
from controller.cli.output import err as _err
from controller.cli.output import out as _out
from controller.cli.service_client import (
    ClientError,
    ServiceClient,
    forget_token,
    load_token,
    resolve_url,
    save_token,
)
from controller.service.protocol import CommandReply

SIMPLE_COMMANDS = ("hold", "unhold", "stop", "abort", "reset", "clear", "cool_rotation",
                   "purge")
CLIENT_COMMANDS = ("status", "start", *SIMPLE_COMMANDS, "alarms", "mode", "trim", "add-passes",
                   "jog", "home", "move", "login", "logout")
JOG_RENEW_S = 0.1
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


# --------------------------------------------------------------------------------------------
# Parsers


def _client_parser(sub: Subparsers, name: str,
                   help_text: str, *, reason: bool = True) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text)
    parser.set_defaults(client_command=name)
    parser.add_argument("--url", default=None,
                        help="the service (else $POVD_URL, else http://127.0.0.1:8470)")
    if reason:
        parser.add_argument("--reason", default=None, help="why (recorded with the command)")
    return parser


def add_client_commands(subparsers: Subparsers) -> None:
    """Add the client commands; each sets `client_command` for `run_client_command`."""
    status = _client_parser(subparsers, "status", "the service's state, run and alarms",
                            reason=False)
    status.add_argument("--json", action="store_true")
    _add_start(subparsers)
    for name in SIMPLE_COMMANDS:
        what = {"cool_rotation": "turn a hot rod at its cooling speed again (after an E-stop)",
                "purge": "purge after a trip that forbade it, once exhaust and scrubber are "
                         "back"}.get(name, f"{name} the run")
        _client_parser(subparsers, name, what)
    _add_alarms(subparsers)
    mode = _client_parser(subparsers, "mode", "change the unit mode")
    mode.add_argument("mode", choices=["production", "maintenance"])
    trim = _client_parser(subparsers, "trim",
                          "trim power and traverse speed within the recipe's bounds")
    trim.add_argument("--power-kw", type=float, default=None)
    trim.add_argument("--traverse-pct", type=float, default=None)
    _add_passes(subparsers)
    _add_motion(subparsers)
    login = _client_parser(subparsers, "login", "log in to the service", reason=False)
    login.add_argument("username", nargs="?", default=None,
                       help="default: your login name on this computer")
    _client_parser(subparsers, "logout", "log out of the service", reason=False)


def _add_start(subparsers: Subparsers) -> None:
    start = _client_parser(subparsers, "start", "start a recipe on the service's line")
    start.add_argument("recipe", type=Path)
    start.add_argument("--serial", default=None, help="preform serial number")
    start.add_argument("--operator", default=None, help="operator name (default: the login)")
    start.add_argument("--bait-rod-lot", default=None)
    start.add_argument("--precursor-lot", default=None)
    interrupted = start.add_mutually_exclusive_group()
    interrupted.add_argument("--resume", type=int, default=None, metavar="RUN_ID",
                             help="continue a run a dead controller left interrupted")
    interrupted.add_argument("--abandon", type=int, default=None, metavar="RUN_ID",
                             help="record an interrupted run as abandoned, then start anew")


def _add_passes(subparsers: Subparsers) -> None:
    passes = _client_parser(
        subparsers, "add-passes",
        "add extra passes to a layer of the running deposit step (the current one unless "
        "--layer), within the extra_passes its recipe allows; e.g. when the alarm "
        "growth_out_of_authority says the target cannot be reached inside the trims")
    passes.add_argument("--layer", type=int, default=None, metavar="N",
                        help="the layer's index in the deposit step, from 0 (default: the "
                             "current layer); the current or a later one")
    passes.add_argument("--passes", type=int, required=True, metavar="K",
                        help="how many passes to add (1 or more)")


def _add_alarms(subparsers: Subparsers) -> None:
    alarms = _client_parser(subparsers, "alarms", "list, acknowledge or shelve alarms",
                            reason=False)
    alarms.add_argument("--json", action="store_true")
    alarm_sub = alarms.add_subparsers(dest="alarm_action")
    ack = alarm_sub.add_parser("ack", help="acknowledge an alarm")
    ack.add_argument("alarm_id")
    ack.add_argument("--reason", default=None)
    shelve = alarm_sub.add_parser("shelve", help="shelve an alarm for a while")
    shelve.add_argument("alarm_id")
    shelve.add_argument("--for", dest="for_s", type=float, required=True, metavar="SECONDS")
    shelve.add_argument("--reason", required=True)


def _add_motion(subparsers: Subparsers) -> None:
    jog = _client_parser(subparsers, "jog", "jog an axis while held (maintenance mode)")
    jog.add_argument("axis")
    jog.add_argument("direction", choices=["+", "-"])
    jog.add_argument("--speed", type=float, default=None)
    jog.add_argument("--for", dest="for_s", type=float, default=None, metavar="SECONDS",
                     help="stop after this long (default: until Ctrl-C)")
    jog.add_argument("--renew-every", type=float, default=JOG_RENEW_S, metavar="SECONDS",
                     help="lease renewal period (default 0.1)")
    home = _client_parser(subparsers, "home", "home an axis (maintenance mode)")
    home.add_argument("axis")
    move = _client_parser(subparsers, "move", "move an axis to a position (maintenance mode)")
    move.add_argument("axis")
    move.add_argument("position_mm", type=float)
    move.add_argument("--speed", type=float, default=None)


# --------------------------------------------------------------------------------------------
# Client commands


def _report(reply: CommandReply) -> int:
    state = f" (state {reply.state})" if reply.state else ""
    if reply.accepted:
        _out(f"{reply.command}: accepted{state}")
        return EXIT_OK
    _out(f"{reply.command}: refused: {reply.reason or 'no reason given'}{state}")
    return EXIT_REFUSED


def _print_status(status: dict[str, Any]) -> None:
    _out(f"state {status.get('state', '?')}, mode {status.get('mode', '?')}, "
         f"run {status.get('run_id') or '-'}")
    if status.get("trip_cause"):
        _out(f"  trip cause: {status['trip_cause']}")
    if status.get("op"):
        _out(f"  doing: {status['op']}")
    if status.get("layer"):
        _print_layer(status["layer"])
    _print_alarms(status.get("alarms") or [])


def _print_layer(layer: dict[str, Any]) -> None:
    extra = f" + {layer['extra']} extra" if layer.get("extra") else ""
    _out(f"  layer {layer.get('layer')} ({layer.get('label')}): {layer.get('done')} of "
         f"{layer.get('planned')}{extra} passes made (the recipe allows "
         f"{layer.get('extra_max')} extra)")


def _print_alarms(alarms: list[dict[str, Any]]) -> None:
    if not alarms:
        _out("  no active alarms")
    for alarm in alarms:
        first = " FIRST-OUT" if alarm.get("first_out") else ""
        # The alarm's value where it has one (growth_out_of_authority: the final diameter
        # the run is heading for).
        value = "" if alarm.get("value") is None else f" ({alarm['value']:g})"
        _out(f"  [{alarm.get('priority', '?')}] {alarm.get('id', '?')} "
             f"{alarm.get('state', '?')}{first}: {alarm.get('message', '')}{value}")


def _start_args(args: argparse.Namespace) -> dict[str, Any]:
    path: Path = args.recipe
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _BadInputError(f"cannot read the recipe {path}: {exc}") from exc
    return {"recipe_text": text, "recipe_path": str(path), "preform_serial": args.serial,
            "operator": args.operator, "bait_rod_lot": args.bait_rod_lot,
            "precursor_lot": args.precursor_lot, "resume_run_id": args.resume,
            "abandon_run_id": args.abandon}


def _add_passes_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.passes < 1:
        raise _BadInputError("--passes must be 1 or more")
    if args.layer is not None and args.layer < 0:
        raise _BadInputError("--layer counts from 0")
    passes: dict[str, Any] = {"passes": args.passes}
    if args.layer is not None:
        passes["layer"] = args.layer
    return passes


class _BadInputError(Exception):
    pass


def _command_for(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The service command and its arguments for a parsed command line."""
    name: str = args.client_command
    if name == "start":
        return "start", _start_args(args)
    if name in SIMPLE_COMMANDS:
        return name, {}
    if name == "alarms":
        if args.alarm_action == "ack":
            return "ack", {"alarm_id": args.alarm_id}
        if args.for_s <= 0:
            raise _BadInputError("--for must be positive")
        return "shelve", {"alarm_id": args.alarm_id, "for_s": args.for_s}
    if name == "mode":
        return "mode", {"mode": args.mode}
    if name == "trim":
        trims = {k: v for k, v in (("power_kw", args.power_kw),
                                   ("traverse_pct", args.traverse_pct)) if v is not None}
        if not trims:
            raise _BadInputError("trim what? give --power-kw and/or --traverse-pct")
        return "trim", trims
    if name == "add-passes":
        return "add_passes", _add_passes_args(args)
    if name == "home":
        return "home", {"axis": args.axis}
    if name == "move":
        move: dict[str, Any] = {"axis": args.axis, "position_mm": args.position_mm}
        if args.speed is not None:
            move["speed"] = args.speed
        return "move", move
    raise _BadInputError(f"not a client command: {name}")


def _jog(client: ServiceClient, args: argparse.Namespace) -> int:
    """Jog while held: renew the lease every period until --for elapses or Ctrl-C, then stop.

    If this process dies the lease simply runs out and the axis stops by itself."""
    if args.renew_every <= 0 or (args.for_s is not None and args.for_s <= 0):
        raise _BadInputError("--for and --renew-every must be positive")
    jog: dict[str, Any] = {"axis": args.axis, "direction": args.direction}
    if args.speed is not None:
        jog["speed"] = args.speed
    first = client.command("jog", jog, args.reason)
    if not first.accepted:
        return _report(first)
    _out(f"jogging {args.axis} {args.direction}" +
         (f" for {args.for_s:g} s" if args.for_s else ": Ctrl-C to stop"))
    started = time.monotonic()
    deadline = None if args.for_s is None else started + args.for_s
    outcome, renewals = EXIT_OK, 0
    try:
        while True:
            renewals += 1
            due = started + renewals * args.renew_every
            if deadline is not None and due >= deadline:
                time.sleep(max(0.0, deadline - time.monotonic()))
                break
            time.sleep(max(0.0, due - time.monotonic()))
            reply = client.command("jog", jog)
            if not reply.accepted:
                outcome = _report(reply)
                break
    except KeyboardInterrupt:
        pass
    except ClientError as exc:
        _err(f"jog: {exc.message} (the lease runs out and the axis stops by itself)")
        outcome = EXIT_ERROR
    finally:
        stop = client.command("jog_stop", {"axis": args.axis})
    if outcome == EXIT_OK:
        return _report(stop)
    return outcome


def _move(client: ServiceClient, args: argparse.Namespace) -> int:
    """A move lives on a lease like a jog: renewed every 100 ms until the axis arrives; Ctrl-C
    (or this process dying) lets it run out and the axis stops."""
    _, move = _command_for(args)
    reply = client.command("move", move, args.reason)
    if not reply.accepted:
        return _report(reply)
    _out(f"moving {args.axis} to {args.position_mm:g} mm: Ctrl-C to stop")
    try:
        while (reply.data or {}).get("lease") != "arrived":
            time.sleep(JOG_RENEW_S)
            reply = client.command("move", move)
            if not reply.accepted:
                return _report(reply)
    except KeyboardInterrupt:
        return _report(client.command("jog_stop", {"axis": args.axis}))
    _out(f"{args.axis} at {args.position_mm:g} mm")
    return EXIT_OK


def _login(client: ServiceClient, args: argparse.Namespace) -> int:
    username = args.username or getpass.getuser()
    password = getpass.getpass(f"password for {username}: ")
    reply = client.login(username, password)
    path = save_token(reply["token"], client.url, username=username,
                      expires_at=reply.get("expires_at"))
    expires = time.strftime("%Y-%m-%d %H:%M", time.localtime(reply["expires_at"]))
    _out(f"logged in to {client.url} as {username} ({reply['role']}) until {expires}")
    _out(f"token kept in {path}")
    return EXIT_OK


def _logout(client: ServiceClient) -> int:
    try:
        if client.token is not None:
            client.logout()
    finally:
        forget_token()  # logged out here even if the service could not be told
    _out("logged out")
    return EXIT_OK


def _dispatch(client: ServiceClient, args: argparse.Namespace) -> int:
    name: str = args.client_command
    if name == "login":
        return _login(client, args)
    if name == "logout":
        return _logout(client)
    if name == "status":
        status = client.status()
        if args.json:
            _out(json.dumps(status, indent=2))
        else:
            _print_status(status)
        return EXIT_OK
    if name == "alarms" and args.alarm_action is None:
        alarms = client.alarms()
        if args.json:
            _out(json.dumps(alarms, indent=2))
        else:
            _print_alarms(alarms)
        return EXIT_OK
    if name == "jog":
        return _jog(client, args)
    if name == "move":
        return _move(client, args)
    command, command_args = _command_for(args)
    reply = client.command(command, command_args, args.reason)
    if command == "add_passes" and reply.accepted and "layer" in reply.data:
        _print_layer(reply.data)  # the layer's passes now
    return _report(reply)


def run_client_command(args: argparse.Namespace,
                       client: ServiceClient | None = None) -> int:
    """Run one client command; `client` is injectable (tests), else built from --url."""
    url = resolve_url(args.url)
    owned = client is None
    client = client or ServiceClient(url, load_token(url))
    try:
        return _dispatch(client, args)
    except _BadInputError as exc:
        _err(f"povd {args.client_command}: {exc}")
        return EXIT_INVALID
    except ClientError as exc:
        _err(f"povd {args.client_command}: {exc.message}")
        return EXIT_ERROR
    finally:
        if owned:
            client.close()
