"""Simulated mass-flow controllers: shared flow dynamics behind two wire protocols.

``MfcCore`` is the instrument: a setpoint, a first-order flow response (time constant
``plant.mfc_time_constant_s`` in process time) clamped to full scale, valve hold, gas
selection, and the measured readings with the ``stuck`` and ``drift`` faults applied.
``AlicatAsciiMfcSim`` answers Alicat's ASCII command set on a multi-drop line;
``AlicatModbusMfcSim`` answers Alicat's Modbus map. Both cite docs/devices.md."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import structlog

from controller.config.line import PRECURSORS, MfcConfig
from drivers.codecs import alicat_ascii as ac
from drivers.codecs import alicat_modbus_map as mb
from simulators.faults import FaultBoard
from simulators.modbus_bus import ILLEGAL_ADDRESS, ILLEGAL_VALUE, RegisterDevice
from simulators.plant import Plant

log = structlog.get_logger(__name__)

# The units behind the precursor valve (plant.effective_flow closes the same two).
_PSI_PER_BAR = 14.5038
_ATMOSPHERE_BAR = 1.01325
_STANDARD_PRESSURE_PSIA = 14.696
_KELVIN = 273.15
_DEFAULT_CONTROL_POINT = 37  # register 122: control on mass flow


class Hold(Enum):
    NONE = "none"
    CLOSED = "closed"
    CURRENT = "current"


_VALVE_HOLDS: dict[int, Hold] = {
    mb.ValveSetting.CANCEL_HOLD: Hold.NONE,
    mb.ValveSetting.HOLD_CLOSED: Hold.CLOSED,
    mb.ValveSetting.HOLD_CURRENT: Hold.CURRENT,
}


@dataclass(frozen=True)
class Measurement:
    pressure_psia: float
    temperature_c: float
    volumetric_slpm: float
    mass_slpm: float


class MfcCore:
    """The flow physics and instrument state both protocol front ends share."""

    def __init__(self, name: str, config: MfcConfig, plant: Plant, faults: FaultBoard) -> None:
        self.name = name
        self.config = config
        self.plant = plant
        self.faults = faults
        self.full_scale_slpm = config.full_scale_slpm
        self.setpoint_slpm = 0.0
        self.flow_slpm = 0.0  # the true flow through the device
        self.gas_number = config.gas_number
        self.hold = Hold.NONE
        self.locked = False
        self._drift_accumulated = 0.0
        self._stuck: Measurement | None = None
        self._behind_precursor_valve = name in PRECURSORS
        # The flow response's factor for the last step length (steps repeat one length).
        self._alpha_dt_s = 0.0
        self._alpha = 0.0
        self._log = log.bind(device=name)

    # -- commands ------------------------------------------------------------------------
    def set_setpoint(self, value_slpm: float) -> float:
        """Apply a setpoint clamped to 0..full scale; returns what was applied."""
        self.setpoint_slpm = min(max(value_slpm, 0.0), self.full_scale_slpm)
        return self.setpoint_slpm

    def select_gas(self, number: int) -> None:
        self.gas_number = number
        self._log.debug("mfc_sim.gas", gas_number=number)

    @property
    def gas_label(self) -> str:
        return ac.gas_label(self.gas_number, (self.config.gas_number, self.config.gas))

    # -- dynamics ------------------------------------------------------------------------
    def _gas_available(self) -> bool:
        if not self.plant.master_valve_open:
            return False
        return not self._behind_precursor_valve or self.plant.precursor_valve_open

    def step(self, dt_s: float) -> None:
        if self.faults.quiet(self.name):
            # Nothing stuck or drifting: what measure() and _step_drift() would leave, without
            # computing a measurement nobody reads (a read measures for itself).
            self._stuck = None
            if dt_s > 0:
                self._step_flow(dt_s)
                self._drift_accumulated = 0.0
        else:
            self.measure()  # a `stuck` fault freezes the readings from before this step on
            if dt_s > 0:
                self._step_flow(dt_s)
                self._step_drift(dt_s)
        self.plant.gas_flow_slpm[self.name] = self.flow_slpm

    def _step_flow(self, dt_s: float) -> None:
        if not self._gas_available() or self.hold is Hold.CLOSED:
            self.flow_slpm = 0.0  # a closed valve upstream or here stops the gas at once
            return
        if self.hold is Hold.CURRENT:
            return
        if dt_s != self._alpha_dt_s:
            self._alpha = 1.0 - math.exp(-dt_s / self.plant.config.mfc_time_constant_s)
            self._alpha_dt_s = dt_s
        flow = self.flow_slpm + (self.setpoint_slpm - self.flow_slpm) * self._alpha
        # min(max(flow, 0.0), full scale), spelled out: the same floats, no calls.
        if flow < 0.0:
            flow = 0.0
        elif flow > self.full_scale_slpm:
            flow = self.full_scale_slpm
        self.flow_slpm = flow

    def _step_drift(self, dt_s: float) -> None:
        fault = self.faults.active(self.name, "drift")
        if fault is None:
            self._drift_accumulated = 0.0
            return
        self._drift_accumulated += float(fault.params.get("rate_per_s", 0.0)) * dt_s

    # -- readings ------------------------------------------------------------------------
    def _drift_offset(self) -> float:
        fault = self.faults.active(self.name, "drift")
        if fault is None:
            return 0.0
        return float(fault.params.get("offset", 0.0)) + self._drift_accumulated

    def _true_measurement(self) -> Measurement:
        cfg = self.plant.config
        pressure_psia = (cfg.gas_supply_bar + _ATMOSPHERE_BAR) * _PSI_PER_BAR
        temperature_c = cfg.ambient_c
        mass = self.flow_slpm + self._drift_offset()
        # Actual volume at the flow body's pressure and temperature per standard volume.
        standard_k = self.config.standard_temperature_c + _KELVIN
        factor = (temperature_c + _KELVIN) / standard_k * _STANDARD_PRESSURE_PSIA / pressure_psia
        return Measurement(pressure_psia, temperature_c, mass * factor, mass)

    def measure(self) -> Measurement:
        """What the sensor reports: frozen while `stuck`, offset while `drift`."""
        if self.faults.is_active(self.name, "stuck"):
            if self._stuck is None:
                self._stuck = self._true_measurement()
            return self._stuck
        self._stuck = None
        return self._true_measurement()

    def status(self, measurement: Measurement) -> frozenset[str]:
        words: set[str] = set()
        if self.hold is not Hold.NONE:
            words.add("HLD")
        if self.locked:
            words.add("LCK")
        if measurement.mass_slpm > self.full_scale_slpm:
            words.add("MOV")
        if measurement.volumetric_slpm > self.full_scale_slpm:
            words.add("VOV")
        return frozenset(words)


class AlicatAsciiMfcSim:
    """An Alicat-compatible MFC on an ASCII multi-drop line (implements AsciiDevice).

    Answers the commands listed in docs/devices.md; any other line addressed to its unit
    gets `?`. Setpoints beyond 0..full scale are clamped (the frame shows the clamp)."""

    def __init__(self, name: str, config: MfcConfig, plant: Plant, faults: FaultBoard) -> None:
        if not isinstance(config.unit, str):
            raise TypeError(f"{name}: an ASCII MFC needs a unit letter, got {config.unit!r}")
        self.name = name
        self.unit = config.unit
        self.core = MfcCore(name, config, plant, faults)
        self.control_point = _DEFAULT_CONTROL_POINT

    def owns(self, line: str) -> bool:
        return bool(line) and line[0].upper() == self.unit

    def step(self, dt_s: float, wall_now: float) -> None:
        self.core.step(dt_s)

    def frame(self) -> str:
        core = self.core
        measured = core.measure()
        return ac.format_data_frame(
            ac.DataFrame(
                unit=self.unit,
                pressure_psia=measured.pressure_psia,
                temperature_c=measured.temperature_c,
                volumetric_slpm=measured.volumetric_slpm,
                mass_slpm=measured.mass_slpm,
                setpoint_slpm=core.setpoint_slpm,
                gas=core.gas_label,
                status=core.status(measured),
            )
        )

    def handle(self, line: str) -> str | None:
        request = ac.parse_request(line)
        if request is None:
            return ac.UNKNOWN_COMMAND_REPLY
        return self._dispatch(request)

    def _dispatch(self, request: ac.Request) -> str:
        core, command = self.core, request.command
        if command is ac.Command.SETPOINT and request.value is not None:
            value = request.value
            if request.integer_setpoint:
                value *= core.full_scale_slpm
            core.set_setpoint(value)
        elif command is ac.Command.SET_SETPOINT_LS and request.value is not None:
            core.set_setpoint(request.value)
            return self._setpoint_reply()
        elif command is ac.Command.QUERY_SETPOINT:
            return self._setpoint_reply()
        elif command is ac.Command.SELECT_GAS and request.register_value is not None:
            return self._select_gas(request.register_value)
        elif command is ac.Command.READ_REGISTER and request.register is not None:
            return self._read_register(request.register)
        elif command is ac.Command.WRITE_REGISTER:
            return self._write_register(request)
        elif command is ac.Command.HOLD_CLOSED:
            core.hold = Hold.CLOSED
        elif command is ac.Command.HOLD_CURRENT:
            core.hold = Hold.CURRENT
        elif command is ac.Command.CANCEL_HOLD:
            core.hold = Hold.NONE
        elif command in (ac.Command.LOCK, ac.Command.UNLOCK):
            core.locked = command is ac.Command.LOCK
        # POLL, TARE and the commands above answer with a data frame.
        return self.frame()

    def _setpoint_reply(self) -> str:
        # No setpoint ramp is simulated, so the live setpoint is the requested one.
        setpoint = self.core.setpoint_slpm
        return ac.format_setpoint_reply(
            ac.SetpointReply(self.unit, setpoint, setpoint, ac.SLPM_UNIT_CODE, ac.SLPM_UNIT_LABEL)
        )

    def _select_gas(self, number: int) -> str:
        if not 0 <= number <= ac.MAX_GAS_NUMBER:
            return ac.UNKNOWN_COMMAND_REPLY
        self.core.select_gas(number)
        return ac.format_gas_reply(self.unit, number, self.core.gas_label)

    def _read_register(self, register: int) -> str:
        if register == ac.GAS_REGISTER:
            return ac.format_register_reply(self.unit, register, self.core.gas_number)
        if register == ac.CONTROL_POINT_REGISTER:
            return ac.format_register_reply(self.unit, register, self.control_point)
        return ac.UNKNOWN_COMMAND_REPLY

    def _write_register(self, request: ac.Request) -> str:
        register, value = request.register, request.register_value
        if register is None or value is None:
            return ac.UNKNOWN_COMMAND_REPLY
        if register == ac.GAS_REGISTER:
            number = value & ac.GAS_NUMBER_MASK
            if number > ac.MAX_GAS_NUMBER:
                return ac.UNKNOWN_COMMAND_REPLY
            self.core.select_gas(number)
            return ac.format_register_reply(self.unit, register, number)
        if register == ac.CONTROL_POINT_REGISTER and value == _DEFAULT_CONTROL_POINT:
            # Only mass-flow control is simulated: other control points are refused.
            return ac.format_register_reply(self.unit, register, value)
        return ac.UNKNOWN_COMMAND_REPLY


class AlicatModbusMfcSim(RegisterDevice):
    """An MFC on a Modbus RTU line, answering Alicat's register map (docs/devices.md)."""

    def __init__(self, name: str, config: MfcConfig, plant: Plant, faults: FaultBoard) -> None:
        if not isinstance(config.unit, int):
            raise TypeError(f"{name}: a Modbus MFC needs a numeric unit, got {config.unit!r}")
        super().__init__(
            name=name, unit=config.unit, holding_size=mb.MAP_SIZE, input_size=mb.MAP_SIZE
        )
        self.core = MfcCore(name, config, plant, faults)
        self.command_result = mb.CommandResult.SUCCESS

    def step(self, dt_s: float, wall_now: float) -> None:
        self.core.step(dt_s)

    def readings(self) -> mb.Readings:
        measured = self.core.measure()
        return mb.Readings(
            gas_number=self.core.gas_number,
            status=self.core.status(measured) - {"LCK"},  # no Modbus status bit for LCK
            pressure_psia=measured.pressure_psia,
            temperature_c=measured.temperature_c,
            volumetric_slpm=measured.volumetric_slpm,
            mass_slpm=measured.mass_slpm,
        )

    def refresh(self) -> None:
        block = mb.encode_readings(self.readings())
        end = mb.READINGS_START + mb.READINGS_COUNT
        self.inputs[mb.READINGS_START : end] = block
        self.holding[mb.READINGS_START : end] = block  # the read-only mirror
        self.holding[mb.COMMAND_ID] = int(self.command_result)
        self.holding[mb.SETPOINT : mb.SETPOINT + 2] = mb.encode_float(self.core.setpoint_slpm)

    def on_write(self, address: int, values: list[int]) -> int | None:
        end = address + len(values)
        if address <= mb.COMMAND_ID < end or address == mb.COMMAND_ARGUMENT:
            return self._write_command(address, values)
        if address == mb.SETPOINT and len(values) == 2:
            return self._write_setpoint(values)
        if address == mb.GAS_NUMBER and len(values) == 1:
            if not 0 <= values[0] <= mb.MAX_GAS_NUMBER:
                return ILLEGAL_VALUE
            self.core.select_gas(values[0])
            return None
        if address <= mb.SETPOINT + 1 and end > mb.SETPOINT:
            return ILLEGAL_VALUE  # half a float
        return ILLEGAL_ADDRESS  # read-only or unmapped

    def _write_command(self, address: int, values: list[int]) -> int | None:
        if address < mb.COMMAND_ID or address + len(values) > mb.COMMAND_ARGUMENT + 1:
            return ILLEGAL_ADDRESS
        self.holding[address : address + len(values)] = values
        if address == mb.COMMAND_ID:  # a write that includes the command ID runs it
            self.command_result = self._run_command(
                self.holding[mb.COMMAND_ID], self.holding[mb.COMMAND_ARGUMENT]
            )
        return None

    def _run_command(self, command: int, argument: int) -> mb.CommandResult:
        core = self.core
        if command == mb.SpecialCommand.CHANGE_GAS:
            if argument > mb.MAX_GAS_NUMBER:
                return mb.CommandResult.INVALID_SETTING
            core.select_gas(argument)
        elif command == mb.SpecialCommand.VALVE:
            hold = _VALVE_HOLDS.get(argument)
            if hold is None:
                return mb.CommandResult.INVALID_SETTING
            core.hold = hold
        elif command == mb.SpecialCommand.TARE:
            if argument > 2:
                return mb.CommandResult.INVALID_SETTING
        else:
            return mb.CommandResult.INVALID_COMMAND
        return mb.CommandResult.SUCCESS

    def _write_setpoint(self, values: list[int]) -> int | None:
        value = mb.decode_float(values)
        if not (math.isfinite(value) and 0.0 <= value <= self.core.full_scale_slpm):
            return ILLEGAL_VALUE  # Alicat refuses a setpoint outside its range
        self.core.set_setpoint(value)
        return None
