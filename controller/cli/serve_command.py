"""``povd serve``: the controller as a long-lived service on the line PC.

Devices, supervisor and run records as in ``povd run``, plus the local HTTP API (FastAPI on
uvicorn, loopback by default) and, with ``--mqtt-config``, the MQTT bridge. It prints the URL
it serves. SIGTERM (``systemctl stop``) during a run holds, then stops it in a controlled way,
with every record flushed, before the process exits."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import signal
import socket
from pathlib import Path

import structlog
import uvicorn

from controller.cli.admin_commands import audit_path, users_path
from controller.cli.line_lock import line_lock_or_refusal
from controller.cli.output import EXIT_INVALID, EXIT_OK, EXIT_REFUSED, err, load_config_or_exit, out
from controller.cli.run_command import machine_endpoints
from controller.config.line import ConfigError, LineConfig
from controller.machine.devices import build_machine
from controller.machine.polling import LineClaimRefused
from controller.records.audit import AuditTrail
from controller.records.run_records import RunRecords, records_path, resolve_data_dir
from controller.run.process_clock import ProcessClock
from controller.run.supervisor import Supervisor
from controller.safety.states import ACTIVE_STATES, State
from controller.service.api import create_app
from controller.service.hmi.sessions import DEFAULT_IDLE_LOGOUT_S
from controller.service.hmi.settings import HmiSettings
from controller.service.line_service import LineService
from controller.service.mqtt import MqttBridge
from controller.service.mqtt_settings import MqttSettings, load_mqtt_settings
from controller.service.users import TokenIssuer, UserStore
from drivers.errors import DeviceError

log = structlog.get_logger(__name__)

DEFAULT_HTTP = "127.0.0.1:8470"
SHUTDOWN_GRACE_S = 3


def add_serve_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the controller as a service (HTTP API, MQTT)")
    serve.add_argument("--config", type=Path, default=None, help="line configuration")
    source = serve.add_mutually_exclusive_group()
    source.add_argument("--sim", action="store_true", help="start povd-sim as a child process")
    source.add_argument("--endpoints", type=Path, default=None,
                        help="endpoints document of a machine already running")
    serve.add_argument("--time-scale", type=float, default=None)
    serve.add_argument("--http", default=DEFAULT_HTTP, metavar="HOST:PORT",
                       help=f"where the API listens (default {DEFAULT_HTTP}; port 0: any free)")
    serve.add_argument("--mqtt-config", type=Path, default=None,
                       help="MQTT bridge settings (YAML); without it, no MQTT")
    serve.add_argument("--link-wait", type=float, default=15.0)
    serve.add_argument("--idle-logout-min", type=float, default=DEFAULT_IDLE_LOGOUT_S / 60,
                       help="log a browser (HMI) session out after this many idle minutes "
                       f"(default {DEFAULT_IDLE_LOGOUT_S / 60:g})")
    serve.add_argument("--url-file", type=Path, default=None,
                       help="also write the served URL here (for scripts and tests)")


def _bind(http: str) -> socket.socket:
    host, _, port = http.rpartition(":")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]") or "127.0.0.1", int(port)))
    sock.listen(64)
    sock.setblocking(False)
    return sock


async def serve(args: argparse.Namespace) -> int:
    line = load_config_or_exit(args.config)
    mqtt_settings = None
    if args.mqtt_config is not None:
        try:
            mqtt_settings = load_mqtt_settings(args.mqtt_config)
        except ConfigError as exc:
            for problem in exc.errors:
                err(f"{exc.path}: {problem}")
            return EXIT_INVALID
    data_dir = resolve_data_dir(args.data_dir)
    lock = line_lock_or_refusal(data_dir, line.line)
    if lock is None:
        return EXIT_REFUSED
    try:
        sock = _bind(args.http)
    except OSError as exc:
        lock.release()
        err(f"refused: cannot listen on {args.http}: {exc}")
        return EXIT_REFUSED
    try:
        return await _serve(args, line, data_dir, sock, mqtt_settings)
    except LineClaimRefused as exc:  # another controller drives the line: nothing was written
        err(f"refused: {exc}")
        return EXIT_REFUSED
    finally:
        sock.close()
        lock.release()


async def _serve(
    args: argparse.Namespace,
    line: LineConfig,
    data_dir: Path,
    sock: socket.socket,
    mqtt_settings: MqttSettings | None,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    db = records_path(data_dir)
    users = UserStore(users_path(data_dir))
    tokens = TokenIssuer(users, path=data_dir / "tokens.json")
    async with RunRecords(db, line=line.line) as records, \
            machine_endpoints(args, line) as endpoints:
        machine = build_machine(line, endpoints)
        scale = args.time_scale or machine.time_scale
        if endpoints is not None and "time_scale" in endpoints:
            scale = float(endpoints["time_scale"])
        async with Supervisor(machine, records, clock=ProcessClock(scale),
                              link_wait_s=args.link_wait) as sup:
            await _bring_up(sup)
            with AuditTrail(audit_path(data_dir)) as audit:
                service = LineService(sup, users, db, audit)
                if service.status()["interrupted_runs"]:
                    await sup.make_safe("restart")  # a run died with the last controller
                app = create_app(service, users, tokens, audit, line, records_path=db,
                                 hmi=HmiSettings(idle_logout_s=args.idle_logout_min * 60))
                # An open HMI keeps its live feed streaming: the shutdown ends it after a grace.
                config = uvicorn.Config(app, lifespan="off", log_config=None, ws="none",
                                        access_log=False,
                                        timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
                server = uvicorn.Server(config)
                host, port = sock.getsockname()[:2]
                url = f"http://{host}:{port}"
                http_task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
                bridge = (MqttBridge(service, mqtt_settings,
                                     resume_after=service.last_event_seq(), audit=audit)
                          if mqtt_settings is not None else None)
                async with bridge if bridge is not None else contextlib.nullcontext():
                    out(f"povd serving {line.line}/{line.machine} at {url} "
                        f"(OpenAPI: {url}/docs)")
                    if args.url_file is not None:
                        args.url_file.write_text(url)
                    await stop.wait()
                    await _wind_down(sup)
                server.should_exit = True
                await http_task
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    return EXIT_OK


async def _bring_up(sup: Supervisor) -> None:
    """The links (serving goes on without a missing one: status says so), the idle posture,
    the hardware's latches from a dead controller reset, then the interlocks armed."""
    missing = await sup.wait_links()
    if missing:
        log.warning("serve.links_missing", devices=missing)
    try:
        await sup.make_idle("serve")
    except DeviceError as exc:
        # Serving goes on (status shows the device); the reconciler holds the outputs inside
        # the envelope every safety cycle meanwhile.
        log.error("serve.idle_posture_failed", error=str(exc))  # noqa: TRY400 - the cause is the device
    await sup.reset_controller_loss(getpass.getuser())
    await sup.wait_healthy()


async def _wind_down(sup: Supervisor) -> None:
    """SIGTERM during a run: hold, then a controlled stop, every record flushed."""
    if sup.sm.state not in ACTIVE_STATES:
        return
    log.warning("serve.stopping_run", state=sup.sm.state.value)
    if sup.sm.state in (State.EXECUTE, State.SUSPENDED):
        await sup.command("hold", "system", reason="service stopping (SIGTERM)")
    # An operator's stop or abort already under way is let finish: stopping it again would be
    # refused, and the abort that followed would cut a controlled stop short.
    while sup.sm.state in (State.HOLDING, State.SUSPENDING, State.UNHOLDING,
                           State.UNSUSPENDING, State.STARTING, State.STOPPING, State.ABORTING):
        await asyncio.sleep(0.05)
    if sup.sm.state not in (State.STOPPED, State.ABORTED, State.COMPLETE):
        result = await sup.command("stop", "system", reason="service stopping (SIGTERM)")
        if not result.accepted:
            await sup.command("abort", "system", reason="service stopping (SIGTERM)")
    while sup.sm.state in (State.STOPPING, State.ABORTING):  # the stop runs as its own task
        await asyncio.sleep(0.05)
