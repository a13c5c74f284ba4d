"""Simulated diameter gauge (laser micrometer) on its point-to-point ASCII line.

Speaks the command set of docs/devices.md ("Diameter gauge") through
``drivers.codecs.diameter_gauge_ascii``. It measures the plant's rod diameter with a little
seeded noise, quantised to the configured resolution; outside the configured range, or under
the ``gauge_invalid`` fault, the reading is flagged invalid. ``stuck`` freezes the reading at
its value when the fault began; ``drift`` offsets it."""

from __future__ import annotations

import random
import zlib

import structlog

from controller.config.line import DiameterGaugeConfig
from drivers.codecs import diameter_gauge_ascii as codec
from drivers.codecs.diameter_gauge_ascii import GaugeReading
from simulators.faults import FaultBoard
from simulators.plant import Plant

log = structlog.get_logger(__name__)

IDENTITY = "POVD-LM120,1.02"  # model and firmware the simulated gauge reports
# Measurement noise: a standard deviation well below the 0.05 mm the controller cares about,
# clipped so that no single reading strays further than NOISE_CLIP_MM.
NOISE_SIGMA_MM = 0.004
NOISE_CLIP_MM = 0.012


class DiameterGaugeSim:
    """Owns every line of its point-to-point link."""

    def __init__(
        self, name: str, config: DiameterGaugeConfig, plant: Plant, faults: FaultBoard
    ) -> None:
        self.name = name
        self.config = config
        self.plant = plant
        self.faults = faults
        # Seeded per device so runs repeat, yet independent of the plant's own random stream.
        self._rng = random.Random(plant.config.seed ^ zlib.crc32(name.encode()))
        self._drift_mm = 0.0
        self._stuck_at: GaugeReading | None = None
        self.measurements = 0
        self._log = log.bind(device=name)

    def owns(self, line: str) -> bool:
        return True  # point-to-point: every line is for this gauge

    def step(self, dt_s: float, wall_now: float) -> None:
        """Accumulate a ``drift`` fault's rate in process time."""
        drift = self.faults.active(self.name, "drift")
        if drift is None:
            self._drift_mm = 0.0
        elif dt_s > 0:
            self._drift_mm += float(drift.params.get("rate_per_s", 0.0)) * dt_s

    def handle(self, line: str) -> str | None:
        command = line.strip().upper()
        if command == codec.MEASURE:
            return codec.encode_measurement(self.measure())
        if command == codec.IDENTIFY:
            return codec.encode_identity(IDENTITY)
        if command.startswith((codec.IDENTIFY, codec.MEASURE)):
            return codec.encode_error(codec.ERROR_SYNTAX)
        return codec.encode_error(codec.ERROR_UNKNOWN_COMMAND)

    def measure(self) -> GaugeReading:
        self.measurements += 1
        reading = self._fresh_reading()
        if self.faults.is_active(self.name, "stuck"):
            if self._stuck_at is None:
                self._stuck_at = reading
            return self._stuck_at
        self._stuck_at = None
        return reading

    def _fresh_reading(self) -> GaugeReading:
        if self.faults.is_active(self.name, "gauge_invalid"):
            return GaugeReading(diameter_mm=None, valid=False)
        noise = max(-NOISE_CLIP_MM, min(NOISE_CLIP_MM, self._rng.gauss(0.0, NOISE_SIGMA_MM)))
        value = self.plant.rod_diameter_mm + noise + self._drift_offset_mm()
        step = self.config.resolution_mm
        value = round(round(value / step) * step, 6)
        if not self.config.min_mm <= value <= self.config.max_mm:
            return GaugeReading(diameter_mm=None, valid=False)
        return GaugeReading(diameter_mm=value, valid=True)

    def _drift_offset_mm(self) -> float:
        drift = self.faults.active(self.name, "drift")
        if drift is None:
            return 0.0
        return float(drift.params.get("offset", 0.0)) + self._drift_mm
