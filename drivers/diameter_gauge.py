"""Diameter gauge (laser micrometer) driver over its point-to-point ASCII line.

A thin facade over ``drivers.codecs.diameter_gauge_ascii`` (docs/devices.md, "Diameter
gauge"). An invalid reading is data (``valid=False``), not an error: losing the gauge is an
alarm for the controller, not a stop. A reply that is not a frame is a DeviceProtocolError."""

from __future__ import annotations

import structlog

from drivers.codecs import diameter_gauge_ascii as codec
from drivers.codecs.diameter_gauge_ascii import GaugeReading
from drivers.errors import DeviceProtocolError
from drivers.transports.ascii import AsciiTransport

__all__ = ["DiameterGauge", "GaugeReading"]

log = structlog.get_logger(__name__)


class DiameterGauge:
    def __init__(self, transport: AsciiTransport, *, name: str = "diameter_gauge") -> None:
        self.transport = transport
        self.name = name
        self._log = log.bind(device=name)

    async def read(self) -> GaugeReading:
        """One measurement of the preform diameter at the carriage position."""
        reply = await self.transport.request(codec.MEASURE)
        try:
            return codec.decode_measurement(reply)
        except codec.GaugeFrameError as exc:
            raise DeviceProtocolError(self.name, repr(codec.MEASURE), str(exc)) from exc

    async def identify(self) -> str:
        """The gauge's model and firmware, e.g. ``LM-120,1.02``."""
        reply = await self.transport.request(codec.IDENTIFY)
        try:
            return codec.decode_identity(reply)
        except codec.GaugeFrameError as exc:
            raise DeviceProtocolError(self.name, repr(codec.IDENTIFY), str(exc)) from exc
