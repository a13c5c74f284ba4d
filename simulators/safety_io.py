"""Simulated safety PLC and I/O on Modbus TCP (map in docs/devices.md, "Safety PLC / I/O").

The PLC reads the plant (and the injected process faults) into its inputs, drives the plant
from its outputs word, and owns the RF enable: the safety relay closed, the controller's
heartbeat alive and not latched lost, and the controller's RF permit (outputs bit 8) set.
The heartbeat watchdog runs in WALL time (domain.md rule 7): ``step`` stamps each counted beat
with its ``wall_now``, and the beat is lost once none has been counted for
``heartbeat_timeout_s``. Until a first beat arrives the heartbeat counts as lost (no RF
enable) but nothing is latched: a controller must be alive before RF can be enabled.

One controller per line (domain.md rule 8), at the machine: a beat is one write of the
sender's owner id and its counter (HR 3-4). The PLC holds the line's owner (0 = free): a beat
from the owner, on a free line, or while the owner's heartbeat is lost is accepted (the sender
becomes the owner) and counts if its counter changed or the owner did; any other beat is
refused: not counted, its id shown in IR 14, the owner in IR 13. The owner stays the owner
after its heartbeat is lost (IR 13 names who last controlled the line) until another claims.

Heartbeat loss (a beat was seen, then none for the timeout) is LATCHED (domain.md rule 11): RF
enable dropped, precursor valve closed, heaters off, exhaust fan forced on at once; the master
valve closes once ``heartbeat_loss_purge_s`` of PROCESS time has run (``step``'s dt_s), or at
once while the exhaust, scrubber, gas detector or room O2 monitor is in trip, and stays closed.
Beats resuming do not clear the latch; only the reset command (HR 2 = 1) does, and only while
beats are arriving again. While latched the outputs word is stored but overridden.

Hard-wired behaviour (as the safety relay does it, whatever the outputs word says): with the
relay open (E-stop, or the relay itself open) the normally-closed gas valves close and the
heaters lose power; on E-stop the drives lose power too. IR 12 shows what the PLC drives."""

from __future__ import annotations

import dataclasses

import structlog

from controller.config.line import SafetyIoConfig
from drivers.codecs import safety_io_map as io_map
from drivers.codecs.safety_io_map import SafetyInputs, SafetyOutputs
from simulators.faults import FaultBoard
from simulators.modbus_bus import ILLEGAL_ADDRESS, ILLEGAL_VALUE, RegisterDevice
from simulators.plant import Plant
from simulators.rf_generator import ValueFaults

log = structlog.get_logger(__name__)

SUPPLY_GASES = ("ar", "o2", "n2", "sicl4", "dopant")
# A process fault's reading: params {"value": x} sets it; otherwise it lies past the
# configured trip level by these factors of the threshold, far enough to be unambiguous.
_LOW_FACTOR = 0.5
_HIGH_FACTOR = 2.0
_WATER_TEMP_HIGH_MARGIN_C = 10.0
_O2_ENRICHMENT_MARGIN_PCT = 1.5  # the o2_enrichment fault's default: trip + 1.5 points


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
        self.heartbeat_latched = False
        self.latched_purge_s = 0.0  # process seconds of purge since the latch
        self.latched_master_closed = False  # the latch has closed the master valve
        self._beat_seen = False
        self.owner = io_map.NO_OWNER  # whose beats count; 0 = the line is free
        self.refused_owner = io_map.NO_OWNER  # the last owner id refused
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
        """The outputs word as the controller last wrote it."""
        return io_map.decode_outputs(self.holding[io_map.HR_OUTPUTS])

    @property
    def outputs_effective(self) -> SafetyOutputs:
        """What the PLC drives: the outputs word after the relay and the heartbeat-loss logic;
        ``rf_permit`` is the RF enable actually given."""
        commanded = self.outputs
        relay_ok = self.relay_ok
        latched = self.heartbeat_latched
        return dataclasses.replace(
            commanded,
            gas_master_valve=commanded.gas_master_valve
            and relay_ok
            and not (latched and self.latched_master_closed),
            precursor_valve=commanded.precursor_valve and relay_ok and not latched,
            exhaust_fan=commanded.exhaust_fan or latched,
            heater_a=commanded.heater_a and relay_ok and not latched,
            heater_b=commanded.heater_b and relay_ok and not latched,
            rf_permit=commanded.rf_permit and relay_ok and self.heartbeat_ok and not latched,
        )

    def _apply_to_plant(self) -> None:
        effective = self.outputs_effective
        self.plant.rf_enable = effective.rf_permit
        self.plant.drives_powered = not self.estop
        self.plant.master_valve_open = effective.gas_master_valve
        self.plant.precursor_valve_open = effective.precursor_valve
        self.plant.heaters_on = [effective.heater_a, effective.heater_b]
        self.plant.exhaust_fan_on = effective.exhaust_fan

    # -- Modbus ----------------------------------------------------------------------------
    def read_holding(self, address: int, count: int) -> list[int] | int:
        copy = io_map.HR_INPUTS_COPY
        if address >= copy:  # the input block's read-only copy
            return self.read_input(address - copy, count)
        if address + count > copy:
            return ILLEGAL_ADDRESS  # the settings and the copy are never read together
        return super().read_holding(address, count)

    def on_write(self, address: int, values: list[int]) -> int | None:
        writes = list(enumerate(values, start=address))
        registers = {r for r, _ in writes}
        refused = self._refuse_write(address, values, registers)
        if refused is not None:
            return refused
        if io_map.HR_BEAT_OWNER in registers:
            self._beat(values[0], values[1])
            return None
        for register, value in writes:
            if register == io_map.HR_COMMAND:
                continue  # a command, not a setting: the register always reads 0
            self.holding[register] = value
        if io_map.HR_COMMAND in registers:
            self._reset_latch()
        self._apply_to_plant()
        return None

    @staticmethod
    def _refuse_write(address: int, values: list[int], registers: set[int]) -> int | None:
        """The exception code for a malformed write, None for a good one."""
        beat = {io_map.HR_BEAT_OWNER, io_map.HR_BEAT_COUNTER}
        if io_map.HR_HEARTBEAT in registers or max(registers) >= io_map.HR_INPUTS_COPY:
            return ILLEGAL_ADDRESS  # read-only: a beat without an owner id could claim nothing
        if registers & beat and (address, len(values)) != (io_map.HR_BEAT_OWNER, io_map.BEAT_COUNT):
            return ILLEGAL_ADDRESS  # owner id and counter only ever together, in one write
        if registers & beat and values[0] == io_map.NO_OWNER:
            return ILLEGAL_VALUE
        writes = list(enumerate(values, start=address))
        if any(r == io_map.HR_OUTPUTS and v & ~io_map.OUTPUTS_MASK for r, v in writes):
            return ILLEGAL_VALUE
        if any(
            r == io_map.HR_COMMAND and v != io_map.COMMAND_RESET_HEARTBEAT_LATCH
            for r, v in writes
        ):
            return ILLEGAL_VALUE
        return None

    @property
    def owner_heartbeat_lost(self) -> bool:
        """The owner's beats have stopped (or none has come yet): the line may change hands.
        A beat not yet stamped by a step is a live one."""
        return not (self.heartbeat_ok or self._beat_pending)

    def _beat(self, owner: int, counter: int) -> None:
        if self.owner not in (owner, io_map.NO_OWNER) and not self.owner_heartbeat_lost:
            if owner != self.refused_owner:
                self._log.warning("safety_io_sim.claim_refused",
                                  sender=io_map.format_owner_id(owner),
                                  owner=io_map.format_owner_id(self.owner))
            self.refused_owner = owner
            return
        if owner != self.owner:
            self._log.warning("safety_io_sim.line_claimed", owner=io_map.format_owner_id(owner),
                              previous=io_map.format_owner_id(self.owner))
            self.owner = owner
            self._last_beat_value = None  # a new owner's first beat always counts
        if counter != self._last_beat_value:
            # Stamped with wall time at the next step, which owns the clock.
            self._last_beat_value = counter
            self._beat_pending = True
        self.holding[io_map.HR_HEARTBEAT] = counter
        self.holding[io_map.HR_BEAT_OWNER] = owner
        self.holding[io_map.HR_BEAT_COUNTER] = counter

    def _reset_latch(self) -> None:
        if not self.heartbeat_latched:
            return
        if not (self.heartbeat_ok or self._beat_pending):
            # Beats must be arriving again: a reset with the controller still silent is void.
            self._log.warning("safety_io_sim.latch_reset_refused", reason="no heartbeat")
            return
        self.heartbeat_latched = False
        self.latched_master_closed = False
        self.latched_purge_s = 0.0
        self._log.info("safety_io_sim.latch_reset")

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
            heartbeat_latched=self.heartbeat_latched,
            outputs_effective=self.outputs_effective,
            line_owner=self.owner,
            refused_owner=self.refused_owner,
            **analog,
        )

    # -- process ---------------------------------------------------------------------------
    def step(self, dt_s: float, wall_now: float) -> None:
        was_latched = self.heartbeat_latched
        self._watch_heartbeat(wall_now)
        self._apply_to_plant()
        self.value_faults.step(dt_s)
        self.refresh()  # a `stuck` fault freezes the readings of the step it began in
        if self.heartbeat_latched:
            # The purge counts from the latch: the step that latched it does not count.
            self._purge_after_heartbeat_loss(dt_s if was_latched else 0.0)
            self._apply_to_plant()
            self.refresh()

    def _watch_heartbeat(self, wall_now: float) -> None:
        if self._beat_pending:
            self._beat_pending = False
            self._last_beat_wall = wall_now
            self._beat_seen = True
        alive = (
            self._last_beat_wall is not None
            and wall_now - self._last_beat_wall < self.config.heartbeat_timeout_s
        )
        if alive != self.heartbeat_ok:
            self._log.warning("safety_io_sim.heartbeat", ok=alive)
        self.heartbeat_ok = alive
        if self._beat_seen and not alive and not self.heartbeat_latched:
            self.heartbeat_latched = True
            self.latched_purge_s = 0.0
            self.latched_master_closed = False
            self._log.warning("safety_io_sim.heartbeat_loss_latched")

    def _purge_after_heartbeat_loss(self, dt_s: float) -> None:
        """Count the purge in process time; close the master valve once it has run, or at
        once while purging could push gas into the room (the inputs the PLC reads now)."""
        if self.latched_master_closed:
            return
        self.latched_purge_s += max(0.0, dt_s)
        inputs = io_map.decode_inputs(self.inputs)
        cfg = self.config
        no_purge = (
            inputs.exhaust_draft_pa > cfg.exhaust_trip_pa
            or not inputs.scrubber_ready
            or inputs.gas_detector_ppm > cfg.gas_detector_trip_ppm
            or inputs.room_o2_pct > cfg.room_o2_trip_pct
        )
        if no_purge or self.latched_purge_s >= cfg.heartbeat_loss_purge_s:
            self.latched_master_closed = True
            self._log.warning(
                "safety_io_sim.master_valve_closed",
                purge_s=round(self.latched_purge_s, 3),
                cause="trip" if no_purge else "purge done",
            )

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
        draft = plant_cfg.exhaust_draft_pa if self.outputs_effective.exhaust_fan else 0.0
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
            "room_o2_pct": self._faulted(
                "o2_enrichment",
                plant_cfg.room_o2_pct,
                cfg.room_o2_trip_pct + _O2_ENRICHMENT_MARGIN_PCT,
            ),
        }
        values.update({f"supply_{g}_bar": p for g, p in self._supplies_bar().items()})
        return values
