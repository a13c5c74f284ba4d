"""``povd-sim``: serve the whole simulated line, and drive its faults.

    povd-sim [serve] [--config LINE] [--time-scale N] [--endpoints-json FILE]
    povd-sim fault --endpoints FILE DEVICE KIND [--for SECONDS] [--param KEY=VALUE ...]
    povd-sim clear --endpoints FILE [DEVICE [KIND]]
    povd-sim status --endpoints FILE
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import structlog

from controller.config.line import ConfigError, load_line_config
from controller.config.logging_setup import configure_logging
from simulators.control import control_request
from simulators.line import LineSimulator

log = structlog.get_logger(__name__)

SUBCOMMANDS = ("serve", "fault", "clear", "status")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="povd-sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the simulated line (the default)")
    serve.add_argument("--config", type=Path, default=None, help="line configuration YAML")
    serve.add_argument("--time-scale", type=float, default=1.0,
                       help="process time runs N times faster than wall time")
    serve.add_argument("--endpoints-json", type=Path, default=None,
                       help="write the endpoints here once every device is listening")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--control-port", type=int, default=0)
    serve.add_argument("--no-pty", action="store_true", help="serve serial buses on TCP only")
    serve.add_argument("--log-json", action="store_true")
    fault = sub.add_parser("fault", help="inject a fault into a running simulator")
    fault.add_argument("--endpoints", type=Path, required=True)
    fault.add_argument("device")
    fault.add_argument("kind")
    fault.add_argument("--for", dest="duration_s", type=float, default=None,
                       help="seconds (wall) until the fault clears by itself")
    fault.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    clear = sub.add_parser("clear", help="clear faults (all, a device's, or one)")
    clear.add_argument("--endpoints", type=Path, required=True)
    clear.add_argument("device", nargs="?")
    clear.add_argument("kind", nargs="?")
    status = sub.add_parser("status", help="the plant's true state and active faults")
    status.add_argument("--endpoints", type=Path, required=True)
    return parser


def _params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--param wants KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _write_atomically(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2))
    os.replace(tmp, path)  # a reader never sees half a file


async def serve(args: argparse.Namespace) -> int:
    try:
        line = load_line_config(args.config)
    except ConfigError as exc:
        log.error("config.invalid", path=str(exc.path), errors=exc.errors)  # noqa: TRY400 - the errors are the message; a traceback would bury them
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with LineSimulator(
        line, time_scale=args.time_scale, host=args.host, control_port=args.control_port,
        serve_ptys=not args.no_pty,
    ) as sim:
        endpoints = sim.endpoints()
        if args.endpoints_json:
            _write_atomically(args.endpoints_json, endpoints)
        log.info("povd_sim.ready", control_port=sim.control.port,
                 endpoints=str(args.endpoints_json or ""))
        await stop.wait()
    if args.endpoints_json:
        with contextlib.suppress(FileNotFoundError):
            args.endpoints_json.unlink()
    return 0


async def _control(args: argparse.Namespace) -> int:
    document = json.loads(args.endpoints.read_text())
    host, port = document["control"]["host"], int(document["control"]["port"])
    if args.command == "fault":
        request: dict[str, Any] = {
            "cmd": "fault", "device": args.device, "kind": args.kind,
            "duration_s": args.duration_s, "params": _params(args.param),
        }
    elif args.command == "clear":
        request = {"cmd": "clear", "device": args.device, "kind": args.kind}
    else:
        plant = await control_request(host, port, {"cmd": "plant"})
        faults = await control_request(host, port, {"cmd": "faults"})
        sys.stdout.write(json.dumps({"plant": plant.get("plant"),
                                     "faults": faults.get("faults")}, indent=2) + "\n")
        return 0
    reply = await control_request(host, port, request)
    sys.stdout.write(json.dumps(reply) + "\n")
    return 0 if reply.get("ok") else 2


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help"):
        argv.insert(0, "serve")
    args = _parser().parse_args(argv)
    if args.command == "serve":
        configure_logging(json=args.log_json or None)
        sys.exit(asyncio.run(serve(args)))
    configure_logging()
    sys.exit(asyncio.run(_control(args)))


if __name__ == "__main__":
    main()
