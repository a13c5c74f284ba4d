"""The whole simulated line: every device of a line configuration on its bus, one shared
plant, a tick loop that advances them, and the control channel.

``LineSimulator`` is an async context manager; ``endpoints()`` is the document povd-sim
writes for the controller (see README): where each device answers, and how."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from types import TracebackType
from typing import Any, Literal, Self

import structlog

from controller.config.line import (
    BusConfig,
    DiameterGaugeConfig,
    LineConfig,
    MfcConfig,
    RfGeneratorConfig,
    SafetyIoConfig,
    ServoAxisConfig,
)
from simulators.ascii_bus import AsciiBusServer, AsciiDevice
from simulators.clock import Clock, ScaledClock
from simulators.control import ControlServer
from simulators.diameter_gauge import DiameterGaugeSim
from simulators.faults import FaultBoard
from simulators.mfc import AlicatAsciiMfcSim, AlicatModbusMfcSim
from simulators.modbus_bus import ModbusBusServer, RegisterDevice
from simulators.plant import Plant, PlantConfig
from simulators.pty_relay import PtyRelay
from simulators.rf_generator import RfGeneratorSim
from simulators.safety_io import SafetyIoSim
from simulators.servo_axis import ServoAxisSim

log = structlog.get_logger(__name__)

SimDevice = RegisterDevice | AsciiDevice
MAX_TICK_S = 0.01
MIN_TICK_S = 0.002
BusServer = ModbusBusServer | AsciiBusServer


def build_device(name: str, line: LineConfig, plant: Plant, faults: FaultBoard) -> SimDevice:
    config = line.devices[name]
    bus = line.buses[config.bus]
    if isinstance(config, RfGeneratorConfig):
        return RfGeneratorSim(name, config, plant, faults)
    if isinstance(config, SafetyIoConfig):
        return SafetyIoSim(name, config, plant, faults)
    if isinstance(config, MfcConfig):
        if bus.protocol == "alicat-ascii":
            return AlicatAsciiMfcSim(name, config, plant, faults)
        return AlicatModbusMfcSim(name, config, plant, faults)
    if isinstance(config, ServoAxisConfig):
        return ServoAxisSim(name, config, plant, faults)
    if isinstance(config, DiameterGaugeConfig):
        return DiameterGaugeSim(name, config, plant, faults)
    raise TypeError(f"no simulator for device {name} ({type(config).__name__})")


# Serial buses are held to their baud rate in wall time up to this time scale. Above it a
# frame's wire time, multiplied by the scale, stretches every transition by process seconds
# (x200: a 40 ms write on a busy precursor bus is 8 process seconds of SiCl4 flowing: half as
# much glass again in a short recipe), so fast runs are unpaced; the bus budget (refused line
# configurations) and the runs at x1 to x10 keep the buses honest.
PACED_UP_TO_SCALE = 10.0

class LineSimulator:
    def __init__(
        self,
        line: LineConfig,
        *,
        time_scale: float = 1.0,
        host: str = "127.0.0.1",
        control_port: int = 0,
        bus_ports: dict[str, int] | None = None,
        tick_s: float | None = None,
        clock: Clock | None = None,
        serve_ptys: bool = True,
        autostep: bool = True,
    ) -> None:
        self.line = line
        self.clock = clock or ScaledClock(time_scale)
        self.time_scale = self.clock.time_scale
        self.host = host
        self.serve_ptys = serve_ptys
        # False: no tick loop; the caller steps the line (a test on a manual clock, which the
        # loop would otherwise step a second time by the same wall advance).
        self.autostep = autostep
        self.faults = FaultBoard(self.clock.wall)
        self.plant = Plant.from_line(line, self.faults)
        self.tick_s = tick_s if tick_s is not None else self._tick_for(self.plant.config)
        self.devices: dict[str, SimDevice] = {
            name: build_device(name, line, self.plant, self.faults) for name in line.devices
        }
        # Devices with process dynamics (motion, flow response, power slew) advance with the
        # plant at the fixed sub-step; the rest (the safety PLC's logic and timers, the gauge's
        # drift) once per tick by the whole step, which keeps a sub-step cheap.
        dynamic = (RfGeneratorSim, AlicatAsciiMfcSim, AlicatModbusMfcSim, ServoAxisSim)
        self._dynamic = [d for d in self.devices.values() if isinstance(d, dynamic)]
        self._per_tick = [d for d in self.devices.values() if not isinstance(d, dynamic)]
        self.max_step_s = self.plant.config.max_step_s
        self.buses: dict[str, BusServer] = {}
        self.relays: dict[str, PtyRelay] = {}
        ports = bus_ports or {}
        for bus_name, bus in line.buses.items():
            members = [self.devices[n] for n, d in line.devices.items() if d.bus == bus_name]
            if members:
                port = ports.get(bus_name, 0)
                self.buses[bus_name] = self._bus_server(bus_name, bus, members, port)
                wire = self.buses[bus_name].wire
                if wire is not None:
                    wire.paced = self.time_scale <= PACED_UP_TO_SCALE
        self.control = ControlServer(
            self.faults, self.plant, list(self.devices), host=host, port=control_port,
            extra=lambda: {"time_scale": self.time_scale},
        )
        self._ticker: asyncio.Task[None] | None = None
        self.ticks = 0

    def _tick_for(self, plant: PlantConfig) -> float:
        """Wall seconds between ticks: what a device shows on the wire is as fresh as the last
        tick, so at high time scales the tick shortens (down to MIN_TICK_S) to keep that within
        a sub-step or two of process time (a turning point seen 2 process seconds late at x200
        lays a layer's boundary 0.01 mm off)."""
        return min(MAX_TICK_S, max(MIN_TICK_S, 2 * plant.max_step_s / self.time_scale))

    def _bus_server(
        self, name: str, bus: BusConfig, members: list[SimDevice], port: int
    ) -> BusServer:
        if bus.protocol in ("modbus-tcp", "modbus-rtu"):
            registers = [m for m in members if isinstance(m, RegisterDevice)]
            framing: Literal["tcp", "rtu"] = "tcp" if bus.protocol == "modbus-tcp" else "rtu"
            return ModbusBusServer(name, framing, registers, self.faults, host=self.host, port=port,
                                   baudrate=bus.baudrate)  # held to it on RTU only
        ascii_devices = [m for m in members if not isinstance(m, RegisterDevice)]
        return AsciiBusServer(name, ascii_devices, self.faults, host=self.host, port=port,
                              baudrate=bus.baudrate)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        for bus in self.buses.values():
            await bus.start()
        if self.serve_ptys:
            for name, bus in self.buses.items():
                if self.line.buses[name].protocol != "modbus-tcp":
                    relay = PtyRelay(name, self.host, bus.port)
                    await relay.start()
                    self.relays[name] = relay
        await self.control.start()
        if self.autostep:
            self._ticker = asyncio.create_task(self._tick_loop(), name="plant-ticker")
        log.info("line_sim.started", line=self.line.line, time_scale=self.time_scale)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self.control.stop()
        for relay in self.relays.values():
            await relay.stop()
        self.relays.clear()
        for bus in self.buses.values():
            await bus.stop()

    def step(self, dt_s: float, wall_now: float) -> None:
        """Advance the line by dt_s of process time: the per-tick devices once, then the
        dynamic devices and the plant together in equal sub-steps of at most ``max_step_s``,
        so the physics integrate the same at any time scale (x200: 2 s a tick, 20 sub-steps)."""
        for device in self._per_tick:
            device.step(dt_s, wall_now)
        substeps = max(1, math.ceil(dt_s / self.max_step_s - 1e-9))
        h = dt_s / substeps
        for _ in range(substeps):
            for device in self._dynamic:
                device.step(h, wall_now)
            self.plant.step(h)
        self.ticks += 1

    async def _tick_loop(self) -> None:
        last = self.clock.wall()
        while True:
            await asyncio.sleep(self.tick_s)
            now = self.clock.wall()
            # A stalled loop (a paused process, a slow CI machine) must not turn into one huge
            # physics step: cap it, and let process time lag rather than jump.
            dt_wall = min(now - last, 0.25)
            last = now
            self.step(dt_wall * self.time_scale, now)

    def endpoints(self) -> dict[str, Any]:
        devices: dict[str, Any] = {}
        for name, config in self.line.devices.items():
            bus_cfg = self.line.buses[config.bus]
            server = self.buses[config.bus]
            relay = self.relays.get(config.bus)
            unit = getattr(config, "unit", None)
            devices[name] = {
                "protocol": bus_cfg.protocol,
                "host": self.host,
                "port": server.port,
                "unit": unit,
                "path": relay.path if relay else None,
                "bus": config.bus,
            }
        return {
            "time_scale": self.time_scale,
            "control": {"host": self.host, "port": self.control.port},
            "devices": devices,
            "pid": os.getpid(),
            "started_at": time.time(),
        }

