"""The machine as the controller sees it: one driver per device over one transport per bus,
built from the line configuration and an endpoints document (povd-sim's, or a real line's
own bus settings)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.config.line import (
    AXIS_NAMES,
    MFC_NAMES,
    BusConfig,
    DiameterGaugeConfig,
    LineConfig,
    MfcConfig,
    RfGeneratorConfig,
    SafetyIoConfig,
    ServoAxisConfig,
)
from controller.machine.protocols import (
    DiameterGaugeLike,
    MassFlowControllerLike,
    RfGeneratorLike,
    SafetyIoLike,
    ServoAxisLike,
)
from drivers.diameter_gauge import DiameterGauge
from drivers.mfc import AlicatAsciiMfc, AlicatModbusMfc
from drivers.rf_generator import RfGenerator
from drivers.safety_io import SafetyIo
from drivers.servo_axis import ServoAxis
from drivers.transports.ascii import AsciiTransport
from drivers.transports.endpoint import Endpoint
from drivers.transports.modbus import ModbusTransport

Transport = ModbusTransport | AsciiTransport


@dataclass
class Machine:
    line: LineConfig
    transports: dict[str, Transport]
    rf: RfGeneratorLike
    safety_io: SafetyIoLike
    mfcs: dict[str, MassFlowControllerLike]
    axes: dict[str, ServoAxisLike]
    gauge: DiameterGaugeLike
    time_scale: float = 1.0
    control: tuple[str, int] | None = None  # a simulator's control channel, when there is one
    extra: dict[str, Any] = field(default_factory=dict)

    async def close(self) -> None:
        for transport in self.transports.values():
            await transport.close()


def load_endpoints(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    if "devices" not in document:
        raise ValueError(f"{path}: not an endpoints document (no 'devices')")
    return document


def _bus_endpoints(
    line: LineConfig, endpoints: dict[str, Any] | None, prefer_pty: bool
) -> dict[str, Endpoint]:
    """One endpoint per bus: from the simulator's document, else from the line's own config."""
    result: dict[str, Endpoint] = {}
    for bus_name, bus in line.buses.items():
        if endpoints is None:
            result[bus_name] = bus.endpoint()
            continue
        member = next(
            (endpoints["devices"][n] for n, d in line.devices.items()
             if d.bus == bus_name and n in endpoints["devices"]),
            None,
        )
        if member is None:
            raise ValueError(f"endpoints document has no device on bus {bus_name}")
        path = member.get("path") if prefer_pty else None
        result[bus_name] = Endpoint(
            protocol=bus.protocol, host=member.get("host"), port=member.get("port"),
            path=path, baudrate=bus.baudrate,
        )
    return result


def _transport(name: str, bus: BusConfig, endpoint: Endpoint) -> Transport:
    if bus.protocol in ("modbus-tcp", "modbus-rtu"):
        return ModbusTransport(name, endpoint, timeout_s=bus.timeout_s, retries=bus.retries,
                               urgent_link=bus.wants_urgent_link)
    return AsciiTransport(name, endpoint, timeout_s=bus.timeout_s, retries=bus.retries)


class _Buses:
    """The line's transports, one per bus, each of the kind its protocol needs."""

    def __init__(self, line: LineConfig, endpoints: dict[str, Any] | None,
                 prefer_pty: bool) -> None:
        bus_endpoints = _bus_endpoints(line, endpoints, prefer_pty)
        self.transports = {
            name: _transport(name, bus, bus_endpoints[name]) for name, bus in line.buses.items()
        }

    def modbus(self, bus: str) -> ModbusTransport:
        transport = self.transports[bus]
        assert isinstance(transport, ModbusTransport), bus
        return transport

    def ascii(self, bus: str) -> AsciiTransport:
        transport = self.transports[bus]
        assert isinstance(transport, AsciiTransport), bus
        return transport


def _rf(line: LineConfig, buses: _Buses) -> RfGenerator:
    cfg = line.devices["rf"]
    assert isinstance(cfg, RfGeneratorConfig)
    return RfGenerator(buses.modbus(cfg.bus), cfg.unit, name="rf",
                       max_power_kw=cfg.max_power_kw, max_slew_kw_s=cfg.max_slew_kw_s)


def _safety_io(line: LineConfig, buses: _Buses) -> SafetyIo:
    cfg = line.devices["safety_io"]
    assert isinstance(cfg, SafetyIoConfig)
    return SafetyIo(buses.modbus(cfg.bus), cfg.unit, name="safety_io")


def _mfc(line: LineConfig, buses: _Buses, name: str) -> MassFlowControllerLike:
    cfg = line.devices[name]
    assert isinstance(cfg, MfcConfig)
    if line.buses[cfg.bus].protocol == "alicat-ascii":
        return AlicatAsciiMfc(buses.ascii(cfg.bus), str(cfg.unit), name=name,
                              full_scale_slpm=cfg.full_scale_slpm, gas_number=cfg.gas_number)
    return AlicatModbusMfc(buses.modbus(cfg.bus), int(cfg.unit), name=name,
                           full_scale_slpm=cfg.full_scale_slpm, gas_number=cfg.gas_number)


def _axis(line: LineConfig, buses: _Buses, name: str) -> ServoAxis:
    cfg = line.devices[name]
    assert isinstance(cfg, ServoAxisConfig)
    return ServoAxis(buses.modbus(cfg.bus), cfg.unit, name=name, motion=cfg.motion,
                     min_position_mm=cfg.min_position_mm, max_position_mm=cfg.max_position_mm,
                     max_speed=cfg.max_speed, max_acceleration=cfg.acceleration)


def _gauge(line: LineConfig, buses: _Buses) -> DiameterGauge:
    cfg = line.devices["diameter_gauge"]
    assert isinstance(cfg, DiameterGaugeConfig)
    return DiameterGauge(buses.ascii(cfg.bus), name="diameter_gauge")


def _simulator_settings(
    endpoints: dict[str, Any] | None,
) -> tuple[float, tuple[str, int] | None]:
    """A simulator's time scale and control channel (1 and none for a real line)."""
    if endpoints is None:
        return 1.0, None
    control = None
    if "control" in endpoints:
        control = (str(endpoints["control"]["host"]), int(endpoints["control"]["port"]))
    return float(endpoints.get("time_scale", 1.0)), control


def build_machine(
    line: LineConfig,
    endpoints: dict[str, Any] | None = None,
    *,
    prefer_pty: bool = False,
) -> Machine:
    """Drivers for every device; nothing is connected yet (transports connect on first use)."""
    buses = _Buses(line, endpoints, prefer_pty)
    mfcs = {name: _mfc(line, buses, name) for name in MFC_NAMES}
    axes: dict[str, ServoAxisLike] = {name: _axis(line, buses, name) for name in AXIS_NAMES}
    time_scale, control = _simulator_settings(endpoints)
    return Machine(line=line, transports=buses.transports, rf=_rf(line, buses),
                   safety_io=_safety_io(line, buses), mfcs=mfcs, axes=axes,
                   gauge=_gauge(line, buses), time_scale=time_scale, control=control)
