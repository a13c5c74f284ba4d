"""Driver for the RF generator (Modbus TCP; register map in docs/devices.md, "RF generator").

A thin typed facade: it speaks kW and kW/s, refuses out-of-range values before anything is
sent, and holds no policy. Timeouts, retries and reconnects are the transport's; what a
failure means is the controller's."""

from __future__ import annotations

import math

import structlog

from drivers.codecs import rf_generator_map as rf_map
from drivers.codecs.rf_generator_map import RfStatus
from drivers.errors import DeviceRangeError
from drivers.transports.modbus import ModbusTransport

__all__ = ["RfGenerator", "RfStatus"]

log = structlog.get_logger(__name__)


class RfGenerator:
    def __init__(
        self,
        transport: ModbusTransport,
        unit: int,
        *,
        name: str = "rf",
        max_power_kw: float,
        max_slew_kw_s: float,
    ) -> None:
        if not max_power_kw > 0 or not max_slew_kw_s > 0:
            raise ValueError(f"{name}: max_power_kw and max_slew_kw_s must be positive")
        self.name = name
        self.unit = unit
        self.max_power_kw = max_power_kw
        self.max_slew_kw_s = max_slew_kw_s
        self._transport = transport
        self._log = log.bind(device=name, unit=unit)

    # -- commands --------------------------------------------------------------------------
    async def set_power_kw(self, kw: float, *, urgent: bool = False) -> None:
        """``urgent``: ahead of every request queued on the bus (the one in flight first)."""
        self._check_range("power_kw", kw, 0.0, self.max_power_kw)
        await self._write(rf_map.HR_POWER_SETPOINT, rf_map.encode_power_kw(kw), urgent=urgent)
        self._log.debug("rf.setpoint", power_kw=kw)

    async def set_ramp_kw_s(self, rate: float) -> None:
        # A ramp below the register's resolution would be stored as 0, which freezes the power.
        self._check_range("ramp_kw_s", rate, rf_map.MIN_RAMP_KW_S, self.max_slew_kw_s)
        await self._write(rf_map.HR_RAMP_RATE, rf_map.encode_ramp_kw_s(rate))
        self._log.debug("rf.ramp", ramp_kw_s=rate)

    async def rf_on(self) -> None:
        """Command RF on. The generator refuses (exception 4) while not ready."""
        await self._write(rf_map.HR_RF_COMMAND, rf_map.RF_COMMAND_ON)
        self._log.info("rf.on")

    async def rf_off(self, *, urgent: bool = False) -> None:
        """``urgent``: ahead of every request queued on the bus (the one in flight first)."""
        await self._write(rf_map.HR_RF_COMMAND, rf_map.RF_COMMAND_OFF, urgent=urgent)
        self._log.info("rf.off")

    async def reset_fault(self) -> None:
        """Ask the generator to clear a latched fault; it stays latched while the cause lasts."""
        await self._write(rf_map.HR_FAULT_RESET, rf_map.FAULT_RESET_REQUEST)
        self._log.info("rf.fault_reset")

    # -- readings --------------------------------------------------------------------------
    async def read(self) -> RfStatus:
        words = await self._transport.read_input(
            self.unit, rf_map.IR_STATUS, rf_map.IR_SETPOINT_ACTUAL + 1
        )
        return rf_map.decode_status(words)

    async def read_frequency_mhz(self) -> float:
        words = await self._transport.read_input(self.unit, rf_map.IR_FREQUENCY, 1)
        return rf_map.decode_frequency_mhz(words[0])

    # -- helpers ---------------------------------------------------------------------------
    def _check_range(self, quantity: str, value: float, low: float, high: float) -> None:
        if not (math.isfinite(value) and low <= value <= high):
            raise DeviceRangeError(self.name, quantity, value, low, high)

    async def _write(self, address: int, value: int, *, urgent: bool = False) -> None:
        await self._transport.write_register(self.unit, address, value, urgent=urgent)
