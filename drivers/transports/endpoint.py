"""Where a bus is reached: a TCP address, or a serial port (a device path, a pseudo-terminal,
or ``socket://host:port`` as a serial device server provides)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Protocol = Literal["modbus-tcp", "modbus-rtu", "alicat-ascii", "ascii"]


@dataclass(frozen=True)
class Endpoint:
    protocol: Protocol
    host: str | None = None
    port: int | None = None
    path: str | None = None
    baudrate: int = 19200

    def serial_url(self) -> str:
        """The URL pyserial opens: the device path if there is one, else the TCP server."""
        if self.path:
            return self.path
        if self.host is None or self.port is None:
            raise ValueError(f"endpoint {self} has neither a path nor host and port")
        return f"socket://{self.host}:{self.port}"

    def describe(self) -> str:
        return self.path or f"{self.host}:{self.port}"
