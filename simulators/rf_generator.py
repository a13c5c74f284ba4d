"""Simulated RF generator on Modbus TCP (register map in docs/devices.md, "RF generator").

Forward power slews toward the setpoint at min(ramp, max slew) kW/s of process time. RF is on
only while commanded on, enabled by the safety relay (``plant.rf_enable``) and free of faults.
Losing the enable, or a fault, switches RF off *and clears the on-command*, so RF never comes
back by itself: the controller must command it again. The generator writes what it emits to
the plant (``rf_on``, ``rf_forward_kw``); the plant decides ignition, flame-out and the
reflected fraction."""

from __future__ import annotations

from typing import Any

import structlog

from controller.config.line import RfGeneratorConfig
from drivers.codecs import rf_generator_map as rf_map
from drivers.codecs.rf_generator_map import RfStatus
from simulators.faults import FaultBoard
from simulators.modbus_bus import DEVICE_FAILURE, ILLEGAL_VALUE, RegisterDevice
from simulators.plant import Plant

log = structlog.get_logger(__name__)

_REGISTER_MAX = 0xFFFF


class ValueFaults:
    """The value faults of one device's measured channels.

    ``stuck`` freezes every reading at its value when the fault began; ``drift`` adds
    ``offset`` plus ``rate_per_s`` x process seconds since the fault began, to every channel
    or only to ``params["channel"]``. Written for any simulator with analog readings."""

    def __init__(self, device: str, faults: FaultBoard) -> None:
        self.device = device
        self.faults = faults
        self._frozen: dict[str, float] | None = None
        self._drift_accumulated = 0.0

    def step(self, dt_s: float) -> None:
        if self.faults.quiet(self.device):
            self._drift_accumulated = 0.0
            return
        fault = self.faults.active(self.device, "drift")
        if fault is None:
            self._drift_accumulated = 0.0
            return
        self._drift_accumulated += float(fault.params.get("rate_per_s", 0.0)) * dt_s

    def release(self) -> None:
        """What ``apply`` leaves when nothing is stuck, without computing readings."""
        self._frozen = None

    def apply(self, true_values: dict[str, float]) -> dict[str, float]:
        measured = self._drifted(true_values)
        if self.faults.active(self.device, "stuck") is None:
            self._frozen = None
            return measured
        if self._frozen is None:
            self._frozen = measured
        return dict(self._frozen)

    def _drifted(self, values: dict[str, float]) -> dict[str, float]:
        fault = self.faults.active(self.device, "drift")
        if fault is None:
            return dict(values)
        offset = float(fault.params.get("offset", 0.0)) + self._drift_accumulated
        channel: Any = fault.params.get("channel")
        return {k: v + offset if channel in (None, k) else v for k, v in values.items()}


class RfGeneratorSim(RegisterDevice):
    def __init__(
        self, name: str, config: RfGeneratorConfig, plant: Plant, faults: FaultBoard
    ) -> None:
        super().__init__(
            name=name,
            unit=config.unit,
            holding_size=rf_map.HOLDING_COUNT,
            input_size=rf_map.INPUT_COUNT,
        )
        self.config = config
        self.plant = plant
        self.faults = faults
        self.forward_kw = 0.0  # what the generator emits (the truth, before value faults)
        self.fault_code = rf_map.FAULT_NONE  # latched
        self.value_faults = ValueFaults(name, faults)
        self.holding[rf_map.HR_RAMP_RATE] = rf_map.encode_ramp_kw_s(config.max_slew_kw_s)
        self._log = log.bind(device=name)

    # -- state -----------------------------------------------------------------------------
    @property
    def commanded_on(self) -> bool:
        return self.holding[rf_map.HR_RF_COMMAND] == rf_map.RF_COMMAND_ON

    @property
    def setpoint_kw(self) -> float:
        return rf_map.decode_power_kw(self.holding[rf_map.HR_POWER_SETPOINT])

    @property
    def slew_kw_s(self) -> float:
        ramp = rf_map.decode_ramp_kw_s(self.holding[rf_map.HR_RAMP_RATE])
        return min(ramp, self.config.max_slew_kw_s)

    @property
    def faulted(self) -> bool:
        return self.fault_code != rf_map.FAULT_NONE or self._fault_cause_active()

    @property
    def ready(self) -> bool:
        return not self.faulted and self.plant.rf_enable

    @property
    def emitting(self) -> bool:
        return self.commanded_on and self.ready

    def _fault_cause_active(self) -> bool:
        return not self.faults.quiet(self.name) and self.faults.is_active(self.name, "rf_fault")

    # -- Modbus ----------------------------------------------------------------------------
    def on_write(self, address: int, values: list[int]) -> int | None:
        writes = list(enumerate(values, start=address))
        for register, value in writes:
            refusal = self._refusal(register, value)
            if refusal is not None:
                return refusal
        for register, value in writes:
            if register == rf_map.HR_FAULT_RESET:
                self._reset_requested(value)
            else:
                self.holding[register] = value
        return None

    def _refusal(self, register: int, value: int) -> int | None:
        if register == rf_map.HR_RF_COMMAND:
            if value not in (rf_map.RF_COMMAND_OFF, rf_map.RF_COMMAND_ON):
                return ILLEGAL_VALUE
            if value == rf_map.RF_COMMAND_ON and not self.ready:
                # Accepting it would turn RF on by itself once the enable returns.
                return DEVICE_FAILURE
        elif register == rf_map.HR_POWER_SETPOINT:
            if value > rf_map.encode_power_kw(self.config.max_power_kw):
                return ILLEGAL_VALUE
        elif register == rf_map.HR_RAMP_RATE:
            if value < 1:
                return ILLEGAL_VALUE
        elif register == rf_map.HR_FAULT_RESET and value not in (0, rf_map.FAULT_RESET_REQUEST):
            return ILLEGAL_VALUE
        return None

    def _reset_requested(self, value: int) -> None:
        # The register is a trigger: it always reads back 0.
        if value != rf_map.FAULT_RESET_REQUEST or self.fault_code == rf_map.FAULT_NONE:
            return
        if self._fault_cause_active():
            self._log.info("rf_sim.fault_reset_refused", fault_code=self.fault_code)
            return
        self._log.info("rf_sim.fault_reset", fault_code=self.fault_code)
        self.fault_code = rf_map.FAULT_NONE

    def refresh(self) -> None:
        self.inputs[:] = rf_map.encode_inputs(self.status(), self.config.frequency_mhz)

    def status(self) -> RfStatus:
        """What the generator reports now (readings after value faults)."""
        on = self.emitting
        measured = self.value_faults.apply(
            {
                "forward_kw": self.forward_kw,
                "reflected_kw": self.forward_kw * self.plant.reflected_fraction,
            }
        )
        return RfStatus(
            forward_kw=_register_range(measured["forward_kw"]),
            reflected_kw=_register_range(measured["reflected_kw"]),
            setpoint_kw=self.setpoint_kw,
            ready=self.ready,
            rf_on=on,
            plasma_lit=self.plant.plasma_lit,
            interlock_open=not self.plant.rf_enable,
            fault=self.faulted,
            fault_code=self.fault_code,
            ramping=on and self.forward_kw != self.setpoint_kw,
        )

    # -- process ---------------------------------------------------------------------------
    def step(self, dt_s: float, wall_now: float) -> None:
        quiet = self.faults.quiet(self.name)
        if not quiet:
            self._latch_fault()
        self._drop_command_if_not_ready()
        emitting = self.emitting
        if emitting:
            self.forward_kw = _slew(self.forward_kw, self.setpoint_kw, self.slew_kw_s * dt_s)
        else:
            self.forward_kw = 0.0  # RF off is immediate: no ramp down
        self.plant.rf_on = emitting
        self.plant.rf_forward_kw = self.forward_kw
        self.value_faults.step(dt_s)
        if quiet:
            # Nothing can freeze the readings, and every read refreshes the image itself: an
            # image refreshed every sub-step would only be overwritten unread.
            self.value_faults.release()
        else:
            self.refresh()  # a `stuck` fault freezes the readings of the step it began in

    def _latch_fault(self) -> None:
        fault = self.faults.active(self.name, "rf_fault")
        if fault is None or self.fault_code != rf_map.FAULT_NONE:
            return
        code = int(fault.params.get("code", rf_map.FAULT_INTERNAL))
        self.fault_code = code or rf_map.FAULT_INTERNAL  # a latched fault is never code 0
        self._log.warning("rf_sim.fault", fault_code=self.fault_code)

    def _drop_command_if_not_ready(self) -> None:
        if not self.commanded_on or self.ready:
            return
        self.holding[rf_map.HR_RF_COMMAND] = rf_map.RF_COMMAND_OFF
        self._log.warning(
            "rf_sim.rf_dropped", interlock_open=not self.plant.rf_enable, fault=self.faulted
        )


def _slew(value: float, target: float, max_step: float) -> float:
    if abs(target - value) <= max_step:
        return target
    return value + max_step if target > value else value - max_step


def _register_range(kw: float) -> float:
    """A reading clamped to what the kW x 10 register can show (drift may push it out)."""
    return max(0.0, min(_REGISTER_MAX / rf_map.POWER_SCALE, kw))
