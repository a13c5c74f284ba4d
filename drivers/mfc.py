"""Mass-flow controller drivers: one interface, two wire protocols.

``AlicatAsciiMfc`` speaks Alicat's ASCII command set on a multi-drop line (Ar, O2, N2);
``AlicatModbusMfc`` speaks Alicat's Modbus RTU map (SiCl4 vapour, dopant). Both are thin
facades: they check ranges in slpm before anything is sent, delegate every byte to the codecs
(``drivers.codecs.alicat_ascii``, ``drivers.codecs.alicat_modbus_map``) and raise the typed
errors of ``drivers.errors``. Command sets and maps: docs/devices.md."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import structlog

from drivers.codecs import alicat_ascii as ascii_codec
from drivers.codecs import alicat_modbus_map as mb
from drivers.errors import DeviceProtocolError, DeviceRangeError
from drivers.transports.ascii import AsciiTransport
from drivers.transports.modbus import ModbusTransport

log = structlog.get_logger(__name__)

# A data frame shows the setpoint with 2 decimals: an echo further off than that was changed.
_ASCII_SETPOINT_TOLERANCE_SLPM = 0.006


@dataclass(frozen=True)
class MfcReading:
    pressure_psia: float
    temperature_c: float
    volumetric_slpm: float
    mass_slpm: float
    setpoint_slpm: float
    gas: str | int  # the ASCII frame's gas label; the Modbus gas number
    status: frozenset[str]

    @property
    def valve_held(self) -> bool:
        return "HLD" in self.status


class MassFlowController(ABC):
    """What the controller needs of any MFC, whatever the wire."""

    def __init__(self, *, name: str, full_scale_slpm: float, gas_number: int) -> None:
        if not full_scale_slpm > 0:
            raise ValueError(f"{name}: full_scale_slpm must be positive")
        self.name = name
        self.full_scale_slpm = full_scale_slpm
        self.gas_number = gas_number  # the gas this unit is configured for
        self._log = log.bind(device=name)

    def _check_flow(self, value_slpm: float) -> None:
        if not (math.isfinite(value_slpm) and 0.0 <= value_slpm <= self.full_scale_slpm):
            raise DeviceRangeError(self.name, "flow_slpm", value_slpm, 0.0, self.full_scale_slpm)

    def _check_gas(self, number: int, maximum: int) -> None:
        if not 0 <= number <= maximum:
            raise DeviceRangeError(self.name, "gas_number", number, 0, maximum)

    @abstractmethod
    async def set_flow_slpm(self, value_slpm: float, *, urgent: bool = False) -> None:
        """Command a mass-flow setpoint; DeviceRangeError (nothing sent) outside 0..FS.
        ``urgent``: ahead of every request queued on the bus (the one in flight first)."""

    @abstractmethod
    async def read(self) -> MfcReading: ...

    @abstractmethod
    async def select_gas(self, number: int) -> None:
        """Select a gas by its Alicat gas number."""

    @abstractmethod
    async def hold_valve_closed(self) -> None: ...

    @abstractmethod
    async def cancel_hold(self) -> None: ...


class AlicatAsciiMfc(MassFlowController):
    """An Alicat-compatible MFC on an ASCII line, addressed by its unit letter A-Z."""

    def __init__(
        self,
        transport: AsciiTransport,
        unit: str,
        *,
        name: str,
        full_scale_slpm: float,
        gas_number: int,
    ) -> None:
        super().__init__(name=name, full_scale_slpm=full_scale_slpm, gas_number=gas_number)
        if len(unit) != 1 or unit not in ascii_codec.UNIT_IDS:
            raise ValueError(f"{name}: an Alicat unit id is one letter A-Z, got {unit!r}")
        self.transport = transport
        self.unit = unit
        self._poll = ascii_codec.poll(unit)
        self._log = self._log.bind(unit=unit)

    async def _request(self, line: str, *, urgent: bool = False) -> str:
        return self._accepted(line, await self.transport.request(line, urgent=urgent))

    def _accepted(self, request: str, reply: str) -> str:
        if ascii_codec.is_rejection(reply):
            raise DeviceProtocolError(self.name, repr(request), "device rejected the command (?)")
        return reply

    def _frame(self, request: str, reply: str) -> ascii_codec.DataFrame:
        try:
            frame = ascii_codec.parse_data_frame(self._accepted(request, reply))
        except ascii_codec.AsciiFormatError as exc:
            raise DeviceProtocolError(self.name, repr(request), str(exc)) from exc
        self._check_unit(request, frame.unit)
        return frame

    def _check_unit(self, request: str, unit: str) -> None:
        # On a shared line a reply from another unit means the bus is confused (two units
        # with one id, or a late reply): never attribute it to this device.
        if unit != self.unit:
            raise DeviceProtocolError(
                self.name, repr(request), f"reply from unit {unit}, expected {self.unit}"
            )

    async def _frame_request(self, line: str, *, urgent: bool = False) -> ascii_codec.DataFrame:
        return self._frame(line, await self.transport.request(line, urgent=urgent))

    async def read(self) -> MfcReading:
        # The poll is this driver's most frequent request: one coroutine between the caller
        # and the transport's (bench/bench_throughput.py).
        frame = self._frame(self._poll, await self.transport.request(self._poll))
        return MfcReading(
            pressure_psia=frame.pressure_psia,
            temperature_c=frame.temperature_c,
            volumetric_slpm=frame.volumetric_slpm,
            mass_slpm=frame.mass_slpm,
            setpoint_slpm=frame.setpoint_slpm,
            gas=frame.gas,
            status=frame.status,
        )

    async def set_flow_slpm(self, value_slpm: float, *, urgent: bool = False) -> None:
        self._check_flow(value_slpm)
        line = ascii_codec.set_setpoint(self.unit, value_slpm)
        frame = await self._frame_request(line, urgent=urgent)
        if abs(frame.setpoint_slpm - value_slpm) > _ASCII_SETPOINT_TOLERANCE_SLPM:
            raise DeviceProtocolError(
                self.name, repr(line), f"setpoint echoed as {frame.setpoint_slpm:g}"
            )
        self._log.info("mfc.setpoint", flow_slpm=value_slpm)

    async def select_gas(self, number: int) -> None:
        self._check_gas(number, ascii_codec.MAX_GAS_NUMBER)
        line = ascii_codec.select_gas(self.unit, number)
        reply = await self._request(line)
        try:
            unit, register, value = ascii_codec.parse_register_reply(reply)
        except ascii_codec.AsciiFormatError as exc:
            raise DeviceProtocolError(self.name, repr(line), str(exc)) from exc
        self._check_unit(line, unit)
        selected = value & ascii_codec.GAS_NUMBER_MASK
        if register != ascii_codec.GAS_REGISTER or selected != number:
            raise DeviceProtocolError(
                self.name, repr(line), f"register {register} echoed gas {selected}"
            )
        self._log.info("mfc.gas", gas_number=number)

    async def hold_valve_closed(self) -> None:
        line = ascii_codec.hold_closed(self.unit)
        frame = await self._frame_request(line)
        if "HLD" not in frame.status:
            raise DeviceProtocolError(self.name, repr(line), "valve hold not reported (no HLD)")
        self._log.info("mfc.hold_closed")

    async def cancel_hold(self) -> None:
        line = ascii_codec.cancel_hold(self.unit)
        frame = await self._frame_request(line)
        if "HLD" in frame.status:
            raise DeviceProtocolError(self.name, repr(line), "valve still held (HLD)")
        self._log.info("mfc.hold_cancelled")


class AlicatModbusMfc(MassFlowController):
    """An MFC on a Modbus RTU line, using Alicat's register map."""

    def __init__(
        self,
        transport: ModbusTransport,
        unit: int,
        *,
        name: str,
        full_scale_slpm: float,
        gas_number: int,
    ) -> None:
        super().__init__(name=name, full_scale_slpm=full_scale_slpm, gas_number=gas_number)
        if not 1 <= unit <= 247:
            raise ValueError(f"{name}: a Modbus unit id is 1-247, got {unit}")
        self.transport = transport
        self.unit = unit
        self._log = self._log.bind(unit=unit)

    async def read(self) -> MfcReading:
        words = await self.transport.read_input(self.unit, mb.READINGS_START, mb.READINGS_COUNT)
        setpoint_words = await self.transport.read_holding(self.unit, mb.SETPOINT, 2)
        request = f"read readings @{self.unit}"
        try:
            readings = mb.decode_readings(words)
            setpoint = mb.decode_float(setpoint_words)
        except ValueError as exc:
            raise DeviceProtocolError(self.name, request, str(exc)) from exc
        if not math.isfinite(setpoint):
            raise DeviceProtocolError(self.name, request, "setpoint is not a finite float")
        return MfcReading(
            pressure_psia=readings.pressure_psia,
            temperature_c=readings.temperature_c,
            volumetric_slpm=readings.volumetric_slpm,
            mass_slpm=readings.mass_slpm,
            setpoint_slpm=setpoint,
            gas=readings.gas_number,
            status=readings.status,
        )

    async def set_flow_slpm(self, value_slpm: float, *, urgent: bool = False) -> None:
        self._check_flow(value_slpm)
        await self.transport.write_registers(
            self.unit, mb.SETPOINT, mb.encode_float(value_slpm), urgent=urgent
        )
        self._log.info("mfc.setpoint", flow_slpm=value_slpm)

    async def _command(self, command: mb.SpecialCommand, argument: int) -> None:
        """A special command, then its result code (Alicat reports a refused command there,
        not as a Modbus exception)."""
        registers = mb.command_registers(command, argument)
        await self.transport.write_registers(self.unit, mb.COMMAND_ID, registers)
        (result,) = await self.transport.read_holding(self.unit, mb.COMMAND_ID, 1)
        if result != mb.CommandResult.SUCCESS:
            raise DeviceProtocolError(
                self.name, f"command {command.name}({argument}) @{self.unit}", f"result {result}"
            )

    async def select_gas(self, number: int) -> None:
        self._check_gas(number, mb.MAX_GAS_NUMBER)
        await self._command(mb.SpecialCommand.CHANGE_GAS, number)
        self._log.info("mfc.gas", gas_number=number)

    async def hold_valve_closed(self) -> None:
        await self._command(mb.SpecialCommand.VALVE, mb.ValveSetting.HOLD_CLOSED)
        self._log.info("mfc.hold_closed")

    async def cancel_hold(self) -> None:
        await self._command(mb.SpecialCommand.VALVE, mb.ValveSetting.CANCEL_HOLD)
        self._log.info("mfc.hold_cancelled")
