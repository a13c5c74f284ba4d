"""The running simulator's control channel: one JSON object per line over TCP.

Tests, tools and ``povd-sim fault ...`` inject and clear faults and read the plant's true
state through it. Requests::

    {"cmd": "ping"}
    {"cmd": "fault", "device": "rf", "kind": "silent", "duration_s": 2.0, "params": {}}
    {"cmd": "clear", "device": "rf", "kind": "silent"}      # both optional: clear all
    {"cmd": "faults"}
    {"cmd": "plant"}                                          # the plant's true state
    {"cmd": "set", "key": "efficiency_drift", "value": 0.2}

Every reply is ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import structlog

from simulators.faults import ALL_FAULTS, FaultBoard
from simulators.plant import Plant

log = structlog.get_logger(__name__)

SETTABLE = {
    "efficiency_drift": float,
    "rod_diameter_mm": float,
    "rod_temperature_c": float,
}


class ControlServer:
    def __init__(
        self,
        faults: FaultBoard,
        plant: Plant,
        device_names: list[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.faults = faults
        self.plant = plant
        self.device_names = set(device_names) | {"plant"}
        self.host = host
        self.port = port
        self._extra = extra
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            for task in list(self._clients):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while line := await reader.readline():
                reply = self.handle_line(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    def handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError as exc:
            return {"ok": False, "error": f"malformed JSON: {exc}"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "a request is a JSON object"}
        try:
            return self.handle(request)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("control.refused", error=str(exc))
            return {"ok": False, "error": str(exc)}

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "ping":
            return {"ok": True}
        if cmd == "fault":
            device, kind = str(request["device"]), str(request["kind"])
            if device not in self.device_names:
                raise ValueError(f"unknown device {device!r}; known: {sorted(self.device_names)}")
            if kind not in ALL_FAULTS:
                raise ValueError(f"unknown fault {kind!r}; known: {sorted(ALL_FAULTS)}")
            duration = request.get("duration_s")
            params = request.get("params") or {}
            if not isinstance(params, dict):
                raise TypeError("params must be an object")
            fault = self.faults.inject(
                device, kind, params=params,
                duration_s=None if duration is None else float(duration),
            )
            log.info("control.fault", device=device, kind=kind, duration_s=duration)
            return {"ok": True, "fault": fault.to_json(fault.started_at)}
        if cmd == "clear":
            cleared = self.faults.clear(request.get("device"), request.get("kind"))
            log.info("control.clear", cleared=cleared)
            return {"ok": True, "cleared": cleared}
        if cmd == "faults":
            return {"ok": True, "faults": self.faults.snapshot()}
        if cmd == "plant":
            extra = self._extra() if self._extra else {}
            return {"ok": True, "plant": self.plant.snapshot(), **extra}
        if cmd == "set":
            key = str(request["key"])
            if key not in SETTABLE:
                raise ValueError(f"cannot set {key!r}; settable: {sorted(SETTABLE)}")
            setattr(self.plant, key, SETTABLE[key](request["value"]))
            return {"ok": True}
        raise ValueError(f"unknown cmd {cmd!r}")


async def control_request(host: str, port: int, request: dict[str, Any]) -> dict[str, Any]:
    """One request to a running simulator's control channel."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout=5)
    finally:
        writer.close()
    reply: dict[str, Any] = json.loads(line)
    return reply
