"""Simulated safety PLC and I/O on Modbus TCP (map in docs/devices.md, "Safety PLC / I/O").

The PLC reads the plant (and the injected process faults) into its inputs, drives the plant
from its outputs word, and owns the RF enable: the safety relay must be closed and the
controller's heartbeat alive. The heartbeat watchdog runs in WALL time (domain.md rule 7):
``step`` stamps each change of the heartbeat register with its ``wall_now``, and the beat is
lost once no change has been seen for ``heartbeat_timeout_s``. Until a first beat arrives the
heartbeat counts as lost: a controller must be alive before RF can be enabled.

Hard-wired behaviour (as the safety relay does it, whatever the outputs word says): with the
relay open (E-stop, or the relay itself open) the normally-closed gas valves close and the
heaters lose power; on E-stop the drives lose power too."""

from __future__ import annotations

import structlog

from controller.config import SafetyIoConfig
from drivers.codecs import safety_io_map as io_map
from drivers.codecs.safety_io_map import SafetyInputs, SafetyOutputs
from simulators.faults import FaultBoard
from simulators.modbus_bus import ILLEGAL_VALUE, RegisterDevice
from simulators.plant import Plant
from simulators.rf_generator import ValueFaults

log = structlog.get_logger(__name__)

SUPPLY_GASES = ("ar", "o2", "n2", "sicl4", "dopant")
# A process fault's reading: params {"value": x} sets it; otherwise it lies past the
# configured trip level by these factors of the threshold, far enough to be unambiguous.
_LOW_FACTOR = 0.5
_HIGH_FACTOR = 2.0
_WATER_TEMP_HIGH_MARGIN_C = 10.0


class SafetyIoSim(RegisterDevice):
    def __init__(
        self, name: str, config: SafetyIoConfig, plant: Plant, faults: FaultBoard
    ) -> None:
        super().__init__(
            name=name,
            unit=config.unit,
            holding_size=io_map.HOLDING_COUNT,
            input_size=io_map.INPUT_COUNT,
        )
        self.config = config
        self.plant = plant
        self.faults = faults
        self.value_faults = ValueFaults(name, faults)
        self.heartbeat_ok = False
        self._last_beat_value: int | None = None
        self._beat_pending = False
        self._last_beat_wall: float | None = None
        self._log = log.bind(device=name)
        self._apply_to_plant()

    # -- hard-wired state ------------------------------------------------------------------
    @property
    def estop(self) -> bool:
        return self.faults.is_active(self.name, "estop")

    @property
    def relay_ok(self) -> bool:
        return not (self.estop or self.faults.is_active(self.name, "safety_relay_open"))

    @property
    def outputs(self) -> SafetyOutputs:
        return io_map.decode_outputs(self.holding[io_map.HR_OUTPUTS])

    def _apply_to_plant(self) -> None:
        relay_ok = self.relay_ok
        outputs = self.outputs
        self.plant.rf_enable = relay_ok and self.heartbeat_ok
        self.plant.drives_powered = not self.estop
        self.plant.master_valve_open = outputs.gas_master_valve and relay_ok
        self.plant.precursor_valve_open = outputs.precursor_valve and relay_ok
        self.plant.heaters_on = [outputs.heater_a and relay_ok, outputs.heater_b and relay_ok]

    # -- Modbus ----------------------------------------------------------------------------
    def on_write(self, address: int, values: list[int]) -> int | None:
        writes = list(enumerate(values, start=address))
        if any(r == io_map.HR_OUTPUTS and v & ~io_map.OUTPUTS_MASK for r, v in writes):
            return ILLEGAL_VALUE
        for register, value in writes:
            self.holding[register] = value
            if register == io_map.HR_HEARTBEAT and value != self._last_beat_value:
                # Stamped with wall time at the next step, which owns the clock.
                self._last_beat_value = value
                self._beat_pending = True
        self._apply_to_plant()
        return None

    def refresh(self) -> None:
        self.inputs[:] = io_map.encode_inputs(self.read_inputs())

    def read_inputs(self) -> SafetyInputs:
        """What the PLC's inputs show now (analog values after value faults)."""
        analog = self.value_faults.apply(self._true_analog())
        return SafetyInputs(
            estop_ok=not self.estop,
            doors_closed=not self.faults.is_active(self.name, "door_open"),
            scrubber_ready=not self.faults.is_active(self.name, "scrubber_not_ready"),
            safety_relay_ok=self.relay_ok,
            rf_enable=self.plant.rf_enable,
            plasma_optical=self.plant.plasma_lit,
            heartbeat_ok=self.heartbeat_ok,
            gas_supply_ok=self._gas_supply_ok(),
            **analog,
        )

    # -- process ---------------------------------------------------------------------------
    def step(self, dt_s: float, wall_now: float) -> None:
        self._watch_heartbeat(wall_now)
        self._apply_to_plant()
        self.value_faults.step(dt_s)
        self.refresh()  # a `stuck` fault freezes the readings of the step it began in

    def _watch_heartbeat(self, wall_now: float) -> None:
        if self._beat_pending:
            self._beat_pending = False
            self._last_beat_wall = wall_now
        alive = (
            self._last_beat_wall is not None
            and wall_now - self._last_beat_wall < self.config.heartbeat_timeout_s
        )
        if alive != self.heartbeat_ok:
            self._log.warning("safety_io_sim.heartbeat", ok=alive)
        self.heartbeat_ok = alive

    # -- inputs ----------------------------------------------------------------------------
    def _faulted(self, kind: str, normal: float, default: float) -> float:
        fault = self.faults.active(self.name, kind)
        if fault is None:
            return normal
        return float(fault.params.get("value", default))

    def _supplies_bar(self) -> dict[str, float]:
        normal = self.plant.config.gas_supply_bar
        fault = self.faults.active(self.name, "supply_pressure_low")
        if fault is None:
            return dict.fromkeys(SUPPLY_GASES, normal)
        low = float(fault.params.get("value", self.config.gas_supply_min_bar * _LOW_FACTOR))
        gas = fault.params.get("gas")  # one supply, or all of them
        return {g: low if gas in (None, g) else normal for g in SUPPLY_GASES}

    def _gas_supply_ok(self) -> bool:
        # The pressure switches see the true pressure: transmitter drift does not fool them.
        return all(p >= self.config.gas_supply_min_bar for p in self._supplies_bar().values())

    def _true_analog(self) -> dict[str, float]:
        cfg, plant_cfg = self.config, self.plant.config
        # No fan, no draft: the duct sits at ambient pressure.
        draft = plant_cfg.exhaust_draft_pa if self.outputs.exhaust_fan else 0.0
        values = {
            "water_flow_l_min": self._faulted(
                "water_flow_low", plant_cfg.water_flow_l_min, cfg.water_flow_min_l_min * _LOW_FACTOR
            ),
            "water_temp_c": self._faulted(
                "water_temp_high",
                plant_cfg.water_temp_c,
                cfg.water_temp_max_c + _WATER_TEMP_HIGH_MARGIN_C,
            ),
            "exhaust_draft_pa": self._faulted("exhaust_lost", draft, 0.0),
            "gas_detector_ppm": self._faulted(
                "gas_alarm", 0.0, cfg.gas_detector_trip_ppm * _HIGH_FACTOR
            ),
            "rod_temperature_c": self.plant.rod_temperature_c,
        }
        values.update({f"supply_{g}_bar": p for g, p in self._supplies_bar().items()})
        return values
